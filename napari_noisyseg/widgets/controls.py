"""Small Qt controls shared by the plugin's widgets."""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


class ScrollingPanel(QScrollArea):
    """A frameless scroll area around a dock widget's content.

    Docks stacked on the right of a screen get less height than their content needs;
    Qt then either grows the window past the screen (the demo's window was 1732 px
    tall on a 1024-px screen) or squeezes rows below their minimum and draws spin
    boxes clipped. Here a dock may shrink to ``MIN_HEIGHT`` and its content scrolls.
    Sideways the content normally fits (its minimum width is the panel's); a dock
    dragged narrower than that scrolls sideways too rather than cutting controls off.
    """

    MIN_HEIGHT = 240  # px

    def __init__(self, content: QWidget):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setWidget(content)
        content.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt API
        # A scroll area does not pass its content's new size hints on to the dock's layout.
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _side_width(self) -> int:
        """What the panel takes beside its content: the vertical scroll bar and the frame
        (napari's style sheet draws a 1-px frame even with ``NoFrame``)."""
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API; the content's, not QScrollArea's 24-line cap
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self._side_width(), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = self.widget().minimumSizeHint()
        return QSize(hint.width() + self._side_width(), min(hint.height(), self.MIN_HEIGHT))


class DockColumnWidth(QObject):
    """Keep docks that share one column at least as wide as the widest content needs.

    napari gives every dock an explicit 50-px minimum width, so a window resized after
    the docks are laid out may squeeze them below their content's minimum, and napari's
    style sheet, applied once the window shows, makes that minimum wider than it was
    when the docks were added (the Review widget's went from 482 to 541 px). The demo's
    docks then stayed 480 px wide and cut off the Review table's right edge. This
    follows every change of the contents' minimum width and sets it as the minimum of
    all the column's docks.
    """

    def __init__(self, window, docks: list):
        super().__init__(window)
        self.window = window
        self.docks = list(docks)
        self.applied_width = 0
        self._pending = False
        for dock in self.docks:
            # A new minimum inside (a larger font, a new control) reaches the plugin
            # widget as a layout request.
            dock.widget().installEventFilter(self)
        self.update()

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.LayoutRequest and not self._pending:
            # Once the event has been handled, so that the size hints are the new ones.
            self._pending = True
            QTimer.singleShot(0, self.update)
        return False

    def _contents(self) -> list:
        """The docks still open, each with its widget (a closed dock is deleted)."""
        alive = []
        for dock in self.docks:
            try:
                if dock.widget() is not None:
                    alive.append(dock)
            except RuntimeError:  # the C++ dock is gone
                pass
        self.docks = alive
        return alive

    def update(self) -> None:
        self._pending = False
        if not self._contents():
            return
        width = max(dock.widget().minimumSizeHint().width() for dock in self.docks)
        if width == self.applied_width:
            return
        self.applied_width = width
        for dock in self.docks:
            dock.setMinimumWidth(width)
        self.window.resizeDocks(self.docks, [width] * len(self.docks), Qt.Orientation.Horizontal)


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """The vertical layout for ``widget``'s content, inside a :class:`ScrollingPanel` filling it."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    content = QWidget()
    outer.addWidget(ScrollingPanel(content))
    return QVBoxLayout(content)


def spin(low: int, high: int, value: int, step: int = 1) -> QSpinBox:
    """An integer spin box with its range, step and value set."""
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    return box


class BudgetPicker(QWidget):
    """Epochs or minutes: two radio buttons, each enabling its own spin box."""

    def __init__(self, epochs: int = 30, minutes: float = 5.0, parent=None):
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        self.by_epochs = QRadioButton("epochs")
        self.by_minutes = QRadioButton("minutes")
        self.by_epochs.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.by_epochs)
        group.addButton(self.by_minutes)
        self.epochs = spin(1, 10000, epochs)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 10000.0)
        self.minutes.setDecimals(1)
        self.minutes.setValue(minutes)
        self.minutes.setSuffix(" min")
        grid.addWidget(self.by_epochs, 0, 0)
        grid.addWidget(self.epochs, 0, 1)
        grid.addWidget(self.by_minutes, 1, 0)
        grid.addWidget(self.minutes, 1, 1)
        self.by_epochs.toggled.connect(self._update)
        self._update()

    def _update(self, *_) -> None:
        self.epochs.setEnabled(self.by_epochs.isChecked())
        self.minutes.setEnabled(self.by_minutes.isChecked())

    def budget(self) -> tuple[int | None, float | None]:
        """(epochs, None) or (None, minutes), whichever is chosen."""
        if self.by_minutes.isChecked():
            return None, float(self.minutes.value())
        return int(self.epochs.value()), None


class Collapsible:
    """A flat arrow button that shows or hides a form (e.g. advanced settings).

    ``toggle`` and ``body`` go into the caller's layout; rows go into ``form``.
    """

    def __init__(self, title: str):
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setChecked(False)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setStyleSheet("QToolButton { border: none; }")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(12, 0, 0, 0)
        self.body.setVisible(False)
        self.toggle.toggled.connect(self.show)

    def show(self, shown: bool) -> None:
        self.body.setVisible(shown)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
