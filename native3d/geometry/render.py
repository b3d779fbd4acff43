"""Offscreen renders of one normalized mesh from fixed cameras, for image conditioning.

The cameras are a deterministic turntable (evenly spread azimuths at one elevation, as in the
multi-view renders of Zero123 / Objaverse pipelines), so every object is seen the same way and
the cameras can be stored in `meta.json`. Rendering uses pyvista/VTK offscreen: one plotter per
mesh, one fixed color, the camera-attached light kit, and a white background.
"""

from __future__ import annotations

import math
import os

import numpy as np
import trimesh

ELEVATION_DEG = 25.0
VIEW_ANGLE_DEG = 30.0  # vertical field of view
# The normalized mesh fits a sphere of radius 0.9 * sqrt(3); at this distance it fills the frame.
CAMERA_DISTANCE = 0.9 * math.sqrt(3) / math.sin(math.radians(VIEW_ANGLE_DEG / 2))
VIEW_UP = (0.0, 1.0, 0.0)  # y up, the glTF (Objaverse) convention
MESH_COLOR = (0.72, 0.72, 0.75)
BACKGROUND = "white"


def fixed_cameras(count: int) -> list[dict]:
    """`count` cameras on a turntable around the origin; JSON-ready dicts."""
    cameras = []
    for i in range(count):
        azimuth = math.radians(45.0 + 360.0 * i / count)  # 45 deg: the first view is not face-on
        elevation = math.radians(ELEVATION_DEG)
        position = (
            CAMERA_DISTANCE * math.cos(elevation) * math.sin(azimuth),
            CAMERA_DISTANCE * math.sin(elevation),
            CAMERA_DISTANCE * math.cos(elevation) * math.cos(azimuth),
        )
        cameras.append(
            {
                "position": [round(c, 6) for c in position],
                "focal_point": [0.0, 0.0, 0.0],
                "view_up": list(VIEW_UP),
                "view_angle": VIEW_ANGLE_DEG,
            }
        )
    return cameras


def render_views(mesh: trimesh.Trimesh, cameras: list[dict], size: int) -> np.ndarray:
    """One RGB image per camera; (V, H=size, W=size, 3) uint8."""
    if not cameras:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    plotter = _plotter(size)
    try:
        plotter.add_mesh(_polydata(mesh), color=MESH_COLOR, smooth_shading=False)
        return np.stack([_render(plotter, camera, size) for camera in cameras])  # (V, H, W, 3)
    finally:
        plotter.close()


def _plotter(size: int):
    if not os.environ.get("DISPLAY"):
        # Without an X server VTK would try X first and warn; EGL renders headless directly.
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import pyvista as pv  # imported late so the variable above is seen when VTK starts

    plotter = pv.Plotter(off_screen=True, window_size=(size, size))
    plotter.set_background(BACKGROUND)
    return plotter


def _polydata(mesh: trimesh.Trimesh):
    import pyvista as pv

    faces = np.asarray(mesh.faces, dtype=np.int64)
    cells = np.hstack(
        [np.full((len(faces), 1), 3, dtype=np.int64), faces]
    ).ravel()  # VTK: [3, i, j, k] per face
    return pv.PolyData(np.asarray(mesh.vertices, dtype=np.float64), cells)


def _render(plotter, camera: dict, size: int) -> np.ndarray:
    plotter.camera.position = camera["position"]
    plotter.camera.focal_point = camera["focal_point"]
    plotter.camera.up = camera["view_up"]
    plotter.camera.view_angle = camera.get("view_angle", VIEW_ANGLE_DEG)
    plotter.reset_camera_clipping_range()  # the default range is set for the first camera only
    plotter.render()  # screenshot() alone returns the first frame again once the window exists
    image = plotter.screenshot(return_img=True)
    return np.asarray(image[:size, :size, :3], dtype=np.uint8)
