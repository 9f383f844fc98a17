"""Small Qt controls shared by the Train and Compare widgets."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QRadioButton,
    QSpinBox,
    QToolButton,
    QWidget,
)


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
