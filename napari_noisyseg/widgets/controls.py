"""Small Qt controls shared by the plugin's widgets."""

from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt
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
    """A frameless, vertical-only scroll area around a dock widget's content.

    Docks stacked on the right of a screen get less height than their content needs;
    Qt then either grows the window past the screen (the demo's window was 1732 px
    tall on a 1024-px screen) or squeezes rows below their minimum and draws spin
    boxes clipped. Here a dock may shrink to ``MIN_HEIGHT`` and its content scrolls.
    """

    MIN_HEIGHT = 240  # px

    def __init__(self, content: QWidget):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt API
        # A scroll area does not pass its content's new size hints on to the dock's layout.
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _scrollbar_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API; the content's, not QScrollArea's 24-line cap
        hint = self.widget().sizeHint()
        return QSize(hint.width() + self._scrollbar_width(), hint.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = self.widget().minimumSizeHint()
        return QSize(hint.width() + self._scrollbar_width(), min(hint.height(), self.MIN_HEIGHT))


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
