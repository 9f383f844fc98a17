"""The overlay layers beside the untouched original labels.

For a labels layer ``L`` the plugin adds, just above ``L``:

* ``L noise``      image layer, noise likelihood, ``magma``, contrast 0..1,
                   additive blending; the ``n`` key toggles it;
* ``L proposals``  labels layer of region ids, coloured by kind (add green,
                   remove magenta, relabel yellow; decided regions faded),
                   with a features table (id, kind, area, likelihood, status, ...);
* ``L cleaned``    labels layer showing the curation session's ``cleaned``
                   array itself, so painting on it edits what is exported.

After a method comparison (:mod:`.compare`) it also adds, per labels layer:

* ``L noise [M]``  one image layer per compared method ``M``, styled as
                   ``L noise``, hidden except the first method's;
* ``L agreement``  image layer, per pixel the fraction of methods flagging it.

Layers are created once and then updated in place: the camera, the dims
slider and the layer selection are left as they were.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import numpy as np

NOISE_SUFFIX = " noise"
PROPOSALS_SUFFIX = " proposals"
CLEANED_SUFFIX = " cleaned"
SUFFIXES = (NOISE_SUFFIX, PROPOSALS_SUFFIX, CLEANED_SUFFIX)

KIND_COLOURS = {
    "add": (0.2, 0.9, 0.3, 0.85),       # green
    "remove": (1.0, 0.15, 0.85, 0.85),  # magenta
    "relabel": (1.0, 0.85, 0.1, 0.85),  # yellow
}
KIND_CODES = {"add": 1, "remove": 2, "relabel": 3}
#: Alpha of regions already decided (accepted: faint; rejected: fainter).
STATUS_ALPHA = {"pending": 0.85, "accepted": 0.3, "rejected": 0.12}
NOISE_KEY = "n"
TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def layer_names(labels_name: str) -> dict:
    """``{"noise": ..., "proposals": ..., "cleaned": ...}`` for a labels layer name."""
    return {
        "noise": labels_name + NOISE_SUFFIX,
        "proposals": labels_name + PROPOSALS_SUFFIX,
        "cleaned": labels_name + CLEANED_SUFFIX,
    }


AGREEMENT_SUFFIX = " agreement"


def method_noise_name(labels_name: str, method: str) -> str:
    """``"<labels> noise [<method>]"``: one compared method's noise layer."""
    return f"{labels_name}{NOISE_SUFFIX} [{method}]"


def is_overlay_name(name: str) -> bool:
    return name.endswith(SUFFIXES)


def layer_choices(viewer) -> tuple[list, list]:
    """Names of the image and labels layers a person may train on: not the plugin's own
    outputs (overlays, or layers it made from a source)."""
    from napari.layers import Image, Labels

    images = [l.name for l in viewer.layers if isinstance(l, Image) and "noisyseg_source" not in l.metadata]
    labels = [l.name for l in viewer.layers
              if isinstance(l, Labels) and "noisyseg_source" not in l.metadata and not is_overlay_name(l.name)]
    return images, labels


def _direct_colormap(colours: dict):
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {None: TRANSPARENT, 0: TRANSPARENT}
    color_dict.update({int(k): v for k, v in colours.items()})
    return DirectLabelColormap(color_dict=color_dict)


def kind_colormap():
    """Colours of a kind map (1 add, 2 remove, 3 relabel): previews during training."""
    return _direct_colormap({code: KIND_COLOURS[kind] for kind, code in KIND_CODES.items()})


def region_colormap(regions) -> object:
    """Colours per region id: by kind, faded by status."""
    colours = {}
    for region in regions:
        r, g, b, _ = KIND_COLOURS[region.kind]
        colours[region.id] = (r, g, b, STATUS_ALPHA[region.status])
    return _direct_colormap(colours)


def region_features(regions) -> dict:
    """Features table of the proposals layer (one row per region; ``index`` = region id)."""
    regions = list(regions)
    return {
        "index": np.array([r.id for r in regions], dtype=np.int64),
        "kind": np.array([r.kind for r in regions], dtype=object),
        "area": np.array([r.area for r in regions], dtype=np.int64),
        "likelihood": np.array([round(r.mean_noise, 3) for r in regions], dtype=float),
        "status": np.array([r.status for r in regions], dtype=object),
        "sample": np.array([r.sample for r in regions], dtype=object),
    }


@contextmanager
def keep_view(viewer):
    """Restore layer selection, active layer, camera and dims after adding layers.

    Only what changed is put back: re-selecting layers rebuilds napari's layer
    controls, which costs a redraw of the dock.
    """
    selected = set(viewer.layers.selection)
    active = viewer.layers.selection.active
    camera = camera_of(viewer)
    center, zoom = tuple(camera.center), camera.zoom
    point = tuple(viewer.dims.point)
    try:
        yield
    finally:
        if set(viewer.layers.selection) != selected or viewer.layers.selection.active is not active:
            keep = [layer for layer in selected if layer in viewer.layers]
            viewer.layers.selection.clear()
            viewer.layers.selection.update(keep)
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active
        if tuple(camera.center) != center:
            camera.center = center
        if camera.zoom != zoom:
            camera.zoom = zoom
        if len(point) == len(viewer.dims.point) and tuple(viewer.dims.point) != point:
            for axis, value in enumerate(point):
                viewer.dims.set_point(axis, value)


def camera_of(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer) -> tuple:
    """(height, width) of the canvas in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "size"):
        return tuple(canvas.size)
    return tuple(getattr(viewer, "_canvas_size", (600, 800)))


def geometry_of(layer) -> dict:
    """``scale`` and ``translate`` of a layer, to place overlays exactly on it."""
    if layer is None:
        return {}
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}


class OverlayLayers:
    """Creates and updates the three overlay layers of every labels source.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)  # the shared state must not keep a closed viewer alive
        self._noise_key_bound = False

    @property
    def viewer(self):
        return self._viewer()

    # ----- lookup ---------------------------------------------------------------
    def get(self, labels_name: str, kind: str):
        name = layer_names(labels_name)[kind]
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def all_layers(self, labels_name: str) -> dict:
        return {kind: self.get(labels_name, kind) for kind in ("noise", "proposals", "cleaned")}

    # ----- creation -------------------------------------------------------------
    def ensure(self, labels_name: str, shape: tuple, geometry: dict | None = None, initial=None,
               metadata: dict | None = None) -> dict:
        """Create the missing overlay layers of ``labels_name`` (just above it); return all three.

        Parameters
        ----------
        shape : tuple
            Shape of the labels source.
        geometry : dict, optional
            ``scale`` / ``translate`` of the original layer (kept even if it was closed).
        initial : ndarray, optional
            First content of ``cleaned`` (a copy of the original labels).
        """
        existing = self.all_layers(labels_name)
        missing = [kind for kind, layer in existing.items() if layer is None]
        if not missing:
            return existing
        from napari.layers import Image, Labels

        names = layer_names(labels_name)
        geometry = dict(geometry or {})
        meta = dict(metadata or {})
        meta["noisyseg_source"] = labels_name
        with keep_view(self.viewer):
            if existing["cleaned"] is None:
                data = np.array(initial, copy=True) if initial is not None else np.zeros(shape, np.int32)
                existing["cleaned"] = self._insert(
                    Labels(data, name=names["cleaned"], metadata=dict(meta), **geometry), labels_name)
            if existing["proposals"] is None:
                layer = Labels(np.zeros(shape, np.int32), name=names["proposals"], opacity=0.8,
                               metadata=dict(meta), **geometry)
                layer.colormap = kind_colormap()
                layer.editable = False
                existing["proposals"] = self._insert(layer, labels_name)
            if existing["noise"] is None:
                layer = Image(np.zeros(shape, np.float32), name=names["noise"], colormap="magma",
                              contrast_limits=(0.0, 1.0), blending="additive", opacity=0.7,
                              metadata=dict(meta), **geometry)
                existing["noise"] = self._insert(layer, labels_name)
        self.bind_noise_key()
        return existing

    def _insert(self, layer, labels_name: str):
        """Insert ``layer`` just above the original labels layer (or on top)."""
        layers = self.viewer.layers
        index = layers.index(labels_name) + 1 if labels_name in layers else len(layers)
        layers.insert(index, layer)
        return layer

    # ----- updates ---------------------------------------------------------------
    def show_preview(self, labels_name: str, position: tuple, noise: np.ndarray, kinds: np.ndarray) -> None:
        """Write one sample's preview into the noise and proposals layers, in place.

        Parameters
        ----------
        position : tuple
            ``()`` for a 2D source, ``(z,)`` for a slice of a stack or volume.
        noise : ndarray float32 (H, W)
        kinds : ndarray uint8 (H, W)
            0 unchanged, 1 add, 2 remove, 3 relabel.
        """
        noise_layer = self.get(labels_name, "noise")
        proposals = self.get(labels_name, "proposals")
        if noise_layer is not None:
            if noise_layer.metadata.get("noisyseg_content") != "preview":
                # The layer may show a session's own array: never write previews into it.
                noise_layer.data = np.array(noise_layer.data, dtype=np.float32, copy=True)
                noise_layer.contrast_limits = (0.0, 1.0)
                noise_layer.metadata["noisyseg_content"] = "preview"
            noise_layer.data[position] = noise
            if self._shows(noise_layer, position):
                noise_layer.refresh()
        if proposals is not None:
            if proposals.metadata.get("noisyseg_content") != "kinds":
                proposals.data = np.zeros(proposals.data.shape, np.int32)
                proposals.colormap = kind_colormap()
                proposals.metadata["noisyseg_content"] = "kinds"
            proposals.data[position] = kinds
            if self._shows(proposals, position):
                proposals.refresh()

    def _shows(self, layer, position: tuple) -> bool:
        """Whether the slice ``position`` of ``layer`` is on screen (else its redraw can wait:
        napari slices the updated data when the person moves the slider there)."""
        if not layer.visible:
            return False
        if not position:
            return True
        world = layer.data_to_world((position[0],) + (0,) * (layer.ndim - 1))[0]
        axis = self.viewer.dims.ndim - layer.ndim
        if axis < 0 or axis in self.viewer.dims.displayed:
            return True
        step = abs(float(layer.scale[0])) or 1.0
        return abs(self.viewer.dims.point[axis] - world) < step / 2

    def show_session(self, session, geometries: list | None = None) -> None:
        """Show a curation session: noise, region ids, and ``cleaned`` (the session's own arrays).

        Parameters
        ----------
        geometries : list of dict, optional
            Per source, ``scale``/``translate`` of the original layer.
        """
        for step in self.session_steps(session, geometries):
            step()

    def session_steps(self, session, geometries: list | None = None) -> list:
        """:meth:`show_session` cut into small steps (each some tens of ms on a big stack),
        so that a caller can run them one event-loop turn apart and the viewer keeps answering."""
        steps = []
        for s, name in enumerate(session.names):
            geometry = geometries[s] if geometries else None
            steps.append(lambda s=s, name=name, g=geometry: self.ensure(name, session.given[s].shape, g,
                                                                        session.given[s]))
            steps.append(lambda s=s, name=name: self._show_noise(name, session.noise[s]))
            steps.append(lambda s=s, name=name: self._show_regions(name, session, s))
            steps.append(lambda s=s, name=name: self._show_cleaned(name, session.cleaned[s]))
        return steps

    def _show_noise(self, name: str, noise) -> None:
        layer = self.get(name, "noise")
        if layer is None:
            return
        if layer.data is not noise:
            layer.data = noise
            layer.contrast_limits = (0.0, 1.0)
        layer.metadata["noisyseg_content"] = "session"

    def _show_regions(self, name: str, session, s: int) -> None:
        """Pending regions (by id, coloured by kind); decided ones are left out of the
        overlay (accepted changes show in ``cleaned``) and are listed in the features."""
        layer = self.get(name, "proposals")
        if layer is None:
            return
        regions = [r for r in session.regions.values() if r.source_index == s]
        display = np.array(session.region_maps[s], copy=True)
        for region in regions:
            if region.status != "pending":
                display.ravel()[session.region_indices(region.id)] = 0
        layer.metadata["noisyseg_content"] = "regions"
        # One colormap per round: decisions then only touch the data (no shader rebuild).
        layer.colormap = region_colormap(regions)
        layer.features = region_features(regions)
        layer.data = display

    def _show_cleaned(self, name: str, cleaned) -> None:
        layer = self.get(name, "cleaned")
        if layer is not None and layer.data is not cleaned:
            layer.data = cleaned

    def refresh_decisions(self, session, ids=None) -> None:
        """After decisions on regions ``ids`` (default: all): put pending regions in, take
        decided ones out of the proposals overlay, update its features' status, redraw
        ``cleaned``. Only the changed pixels are sent to the screen."""
        regions = list(session.regions.values()) if ids is None else [session.regions[i] for i in ids
                                                                       if i in session.regions]
        sources = sorted({r.source_index for r in regions})
        for s in sources:
            layers = self.all_layers(session.names[s])
            proposals = layers["proposals"]
            if proposals is not None and proposals.metadata.get("noisyseg_content") == "regions":
                shape = proposals.data.shape
                table = proposals.features
                for region in (r for r in regions if r.source_index == s):
                    value = region.id if region.status == "pending" else 0
                    indices = np.unravel_index(session.region_indices(region.id), shape)
                    proposals.data_setitem(indices, value)
                    if "index" in table and "status" in table:
                        table.loc[table["index"] == region.id, "status"] = region.status
            if layers["cleaned"] is not None:
                layers["cleaned"].refresh()

    # ----- method comparison ------------------------------------------------------
    def show_comparison(self, labels_name: str, method_noise: dict, agreement: np.ndarray,
                        geometry: dict | None = None) -> dict:
        """Show one source of a method comparison: a noise layer per method and the agreement.

        Layers of an earlier comparison are updated in place; those of methods not
        in this one are removed. Returns ``{layer name: layer}`` of the shown layers.

        Parameters
        ----------
        method_noise : dict of str -> ndarray
            Method → its noise map of this source (first = reference: shown, the rest hidden).
        agreement : ndarray of float
            Fraction of methods flagging each pixel.
        geometry : dict, optional
            ``scale`` / ``translate`` of the original labels layer.
        """
        from napari.layers import Image

        layers = self.viewer.layers
        wanted = [method_noise_name(labels_name, m) for m in method_noise] + [labels_name + AGREEMENT_SUFFIX]
        stale = [layer for layer in layers if layer.metadata.get("noisyseg_source") == labels_name
                 and layer.metadata.get("noisyseg_content") == "comparison" and layer.name not in wanted]
        shown = {}
        meta = {"noisyseg_source": labels_name, "noisyseg_content": "comparison"}
        geometry = dict(geometry or {})
        with keep_view(self.viewer):
            for layer in stale:
                layers.remove(layer)
            items = [(method_noise_name(labels_name, m), np.asarray(noise, np.float32), "magma", index == 0,
                      {**meta, "noisyseg_method": m}) for index, (m, noise) in enumerate(method_noise.items())]
            items.append((labels_name + AGREEMENT_SUFFIX, np.asarray(agreement, np.float32), "viridis", True,
                          {**meta, "noisyseg_methods": list(method_noise)}))
            for name, data, colormap, visible, metadata in items:
                if name in layers:
                    layer = layers[name]
                    layer.data = data
                    layer.contrast_limits = (0.0, 1.0)
                    layer.metadata.update(metadata)
                    layer.visible = visible
                else:
                    layer = self._insert(Image(data, name=name, colormap=colormap, contrast_limits=(0.0, 1.0),
                                               blending="additive", opacity=0.7, visible=visible,
                                               metadata=metadata, **geometry), labels_name)
                shown[name] = layer
        return shown

    # ----- noise toggle --------------------------------------------------------
    def bind_noise_key(self) -> None:
        if self._noise_key_bound:
            return
        self.viewer.bind_key(NOISE_KEY, self._toggle_noise, overwrite=True)
        self._noise_key_bound = True

    def unbind_noise_key(self) -> None:
        if self._noise_key_bound:
            self.viewer.bind_key(NOISE_KEY, None)
            self._noise_key_bound = False

    def _toggle_noise(self, viewer=None) -> None:
        """Show/hide every noise overlay (all together)."""
        noise_layers = [layer for layer in self.viewer.layers if layer.name.endswith(NOISE_SUFFIX)
                        and "noisyseg_source" in layer.metadata]
        if not noise_layers:
            return
        visible = not any(layer.visible for layer in noise_layers)
        for layer in noise_layers:
            layer.visible = visible
