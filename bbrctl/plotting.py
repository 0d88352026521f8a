"""matplotlib for every picture bbrctl draws: the Agg backend, imported only when plotting.

``pyplot()`` returns ``matplotlib.pyplot`` with the non-interactive Agg backend selected (no
display is needed on a cluster node); ``png_bytes(fig)`` renders a figure to PNG bytes in
memory and closes it, so callers write the bytes atomically (``bbrctl.store``) or hand them
to W&B. Simulation figures (``bbrctl.simulate.figures``), report figures
(``bbrctl.report.ablation_plots``) and detection pictures (``bbrctl.detection.tracking.pictures``)
all come through here.
"""

from __future__ import annotations


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, **savefig_kwargs) -> bytes:
    """``fig`` as PNG bytes; the figure is closed whether or not rendering succeeds."""
    import io

    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", **savefig_kwargs)
        return buf.getvalue()
    finally:
        pyplot().close(fig)
