"""A light live plot of the training loss and per-class IoU (QPainter, no matplotlib).

Top panel: loss per step (thin line) and per epoch (dots). Bottom panel: IoU of
each class against the current training labels, per epoch, on 0..1. Repaints
are cheap (a few hundred points), so the plot never slows the event loop.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

CLASS_COLOURS = ("#9e9e9e", "#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176")
LOSS_COLOUR = "#f06292"
MAX_STEP_POINTS = 2000


class TrainingPlot(QWidget):
    """Loss (per step and per epoch) and per-class IoU (per epoch)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Training loss (top; thin: per step, dots: epoch mean) and IoU of each "
                        "class against the current training labels (bottom).")
        self.clear()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(320, 220)

    # ----- data -----------------------------------------------------------------
    def clear(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.epochs: list[tuple[int, float]] = []  # (last step of the epoch, mean loss)
        self.iou: list[list] = []  # per epoch, per class (None = class absent)
        self.title = ""
        self.update()

    def add_step(self, step: int, losses: dict) -> None:
        value = _main_loss(losses)
        if value is None:
            return
        self.steps.append((step, value))
        if len(self.steps) > MAX_STEP_POINTS:  # keep every other point of the oldest half
            half = len(self.steps) // 2
            self.steps = self.steps[:half:2] + self.steps[half:]
        self.update()

    def add_epoch(self, epoch: int, losses: dict, metrics: dict) -> None:
        value = _main_loss(losses)
        step = self.steps[-1][0] if self.steps else epoch + 1
        if value is not None:
            self.epochs.append((step, value))
        iou = metrics.get("iou") if isinstance(metrics, dict) else None
        if isinstance(iou, (list, tuple)):
            self.iou.append(list(iou))
        self.update()

    def set_title(self, text: str) -> None:
        self.title = text
        self.update()

    # ----- drawing --------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect())
        painter.fillRect(rect, QColor("#262930"))
        margin_left, margin_right, top = 38.0, 8.0, 16.0
        height = (rect.height() - top - 18.0) / 2
        loss_rect = QRectF(margin_left, top, rect.width() - margin_left - margin_right, height - 8)
        iou_rect = QRectF(margin_left, top + height + 10, loss_rect.width(), height - 8)
        painter.setPen(QColor("#d0d0d0"))
        painter.drawText(QRectF(4, 0, rect.width() - 8, top), Qt.AlignmentFlag.AlignLeft,
                         self.title or "loss / IoU")
        self._draw_loss(painter, loss_rect)
        self._draw_iou(painter, iou_rect)
        painter.end()

    def _frame(self, painter, rect: QRectF, label_top: str, label_bottom: str, name: str) -> None:
        painter.setPen(QPen(QColor("#5a5f6a"), 1))
        painter.drawRect(rect)
        painter.setPen(QColor("#a0a0a0"))
        font = painter.font()
        font.setPointSizeF(max(6.5, font.pointSizeF() * 0.8))
        painter.setFont(font)
        painter.drawText(QRectF(0, rect.top() - 2, rect.left() - 3, 14), Qt.AlignmentFlag.AlignRight, label_top)
        painter.drawText(QRectF(0, rect.bottom() - 12, rect.left() - 3, 14), Qt.AlignmentFlag.AlignRight,
                         label_bottom)
        painter.drawText(QRectF(rect.left() + 4, rect.top() + 1, rect.width() - 8, 14),
                         Qt.AlignmentFlag.AlignLeft, name)

    def _draw_loss(self, painter, rect: QRectF) -> None:
        values = [v for _, v in self.steps] + [v for _, v in self.epochs]
        finite = [v for v in values if math.isfinite(v)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if high - low < 1e-9:
            high = low + 1.0
        self._frame(painter, rect, f"{high:.3g}", f"{low:.3g}", "loss")
        if not finite:
            return
        last = max([s for s, _ in self.steps] + [s for s, _ in self.epochs] + [1])
        first = min([s for s, _ in self.steps] + [s for s, _ in self.epochs] + [last])
        span = max(last - first, 1)

        def point(step, value):
            x = rect.left() + (step - first) / span * rect.width()
            y = rect.bottom() - (value - low) / (high - low) * rect.height()
            return QPointF(x, y)

        path = QPainterPath()
        for i, (step, value) in enumerate((s, v) for s, v in self.steps if math.isfinite(v)):
            (path.moveTo if i == 0 else path.lineTo)(point(step, value))
        colour = QColor(LOSS_COLOUR)
        colour.setAlpha(110)
        painter.setPen(QPen(colour, 1))
        painter.drawPath(path)
        painter.setPen(QPen(QColor(LOSS_COLOUR), 1.5))
        painter.setBrush(QColor(LOSS_COLOUR))
        previous = None
        for step, value in self.epochs:
            if not math.isfinite(value):
                continue
            p = point(step, value)
            painter.drawEllipse(p, 2.5, 2.5)
            if previous is not None:
                painter.drawLine(previous, p)
            previous = p
        painter.setBrush(Qt.BrushStyle.NoBrush)

    def _draw_iou(self, painter, rect: QRectF) -> None:
        self._frame(painter, rect, "1", "0", "IoU per class")
        if not self.iou:
            return
        n_classes = max(len(row) for row in self.iou)
        span = max(len(self.iou) - 1, 1)
        legend_x = rect.right() - 4
        for k in range(n_classes):
            colour = QColor(CLASS_COLOURS[k % len(CLASS_COLOURS)])
            painter.setPen(QPen(colour, 1.8))
            previous = None
            for e, row in enumerate(self.iou):
                value = row[k] if k < len(row) else None
                if value is None or not math.isfinite(value):
                    previous = None
                    continue
                p = QPointF(rect.left() + (e / span if len(self.iou) > 1 else 0.5) * rect.width(),
                            rect.bottom() - value * rect.height())
                painter.drawEllipse(p, 1.8, 1.8)
                if previous is not None:
                    painter.drawLine(previous, p)
                previous = p
            label = f"class {k}" + (f" {self.iou[-1][k]:.2f}" if k < len(self.iou[-1]) and self.iou[-1][k] is not None else "")
            width = painter.fontMetrics().horizontalAdvance(label) + 6
            legend_x -= width
            painter.drawText(QRectF(legend_x, rect.top() + 1, width, 14), Qt.AlignmentFlag.AlignLeft, label)


def _main_loss(losses: dict):
    if not isinstance(losses, dict) or not losses:
        return None
    value = losses.get("loss", next(iter(losses.values())))
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
