"""The thin bpy backend: apply a :class:`~rendering.scene.Scene` and render its cameras.

Runs only inside a Blender worker process (``rendering/blender_worker.py``), which imports
bpy once and reuses it for many objects. Everything that decides *what* to render lives in
``rendering/scene.py`` and is testable without Blender.

Per camera it writes into ``out_dir``: ``<prefix>_rgba.png`` (8-bit sRGB, Standard view
transform, transparent background), and ``<prefix>_depth.npy`` (float32[H, W], planar z
along the camera axis, 0 where nothing was hit) and ``<prefix>_index.npy`` (uint8[H, W],
object pass index, 0 for background), both with row 0 at the top (OpenCV).
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix, Vector

from rendering.scene import Camera, Light, RenderSettings, Scene, SceneObject

_GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")


def factory_reset() -> None:
    """A clean, empty Blender state (done once per worker start)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)


def clear_scene() -> None:
    """Remove what the previous object left, much cheaper than a factory reset."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj, do_unlink=True)
    for collection in (
        bpy.data.meshes,
        bpy.data.materials,
        bpy.data.lights,
        bpy.data.cameras,
        bpy.data.images,
        bpy.data.worlds,
    ):
        for block in list(collection):
            collection.remove(block)


def _configure(settings: RenderSettings, camera: Camera) -> None:
    scene = bpy.context.scene
    scene.render.engine = settings.engine
    scene.cycles.samples = settings.samples
    scene.cycles.use_denoising = settings.denoise
    scene.cycles.max_bounces = settings.max_bounces
    scene.cycles.use_adaptive_sampling = False  # same cost per view: comparable timings
    scene.render.resolution_x, scene.render.resolution_y = camera.width, camera.height
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.use_persistent_data = True  # keep BVH/kernels between the views of an object
    if settings.device == "GPU":
        prefs = bpy.context.preferences.addons["cycles"].preferences
        for backend in _GPU_BACKENDS:
            try:
                prefs.compute_device_type = backend
            except TypeError:
                continue
            prefs.get_devices()
            if any(d.type == backend for d in prefs.devices):
                for d in prefs.devices:
                    d.use = d.type == backend
                scene.cycles.device = "GPU"
                break
        else:
            raise RuntimeError("render.device is GPU but Cycles found no GPU device")
    else:
        scene.cycles.device = "CPU"
    layer = scene.view_layers[0]
    layer.use_pass_z = "depth" in settings.passes
    layer.use_pass_object_index = "index" in settings.passes


def _compositor(out_dir: str, passes) -> bpy.types.Node:
    """Render Layers -> File Output writing single-layer 32-bit EXRs for depth and index."""
    scene = bpy.context.scene
    tree = bpy.data.node_groups.new("flywheel-compositor", "CompositorNodeTree")
    scene.compositing_node_group = tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.directory = out_dir
    output.format.media_type = "IMAGE"
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    for name, socket in (("depth", "Depth"), ("index", "Object Index")):
        if name in passes:
            output.file_output_items.new("FLOAT", name)
            tree.links.new(layers.outputs[socket], output.inputs[name])
    return output


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _add_object(spec: SceneObject) -> None:
    data = np.load(spec.mesh_path)
    verts = np.ascontiguousarray(data["vertices"], dtype=np.float32)
    faces = np.ascontiguousarray(data["faces"], dtype=np.int32)
    mesh = bpy.data.meshes.new(spec.name)
    mesh.vertices.add(len(verts))
    mesh.vertices.foreach_set("co", verts.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    colors = data["colors"].astype(np.float32) / 255.0
    colors[:, :3] = _srgb_to_linear(colors[:, :3])
    attribute = mesh.color_attributes.new("Col", "FLOAT_COLOR", "POINT")
    attribute.data.foreach_set("color", colors.ravel())

    material = bpy.data.materials.new(f"{spec.name}-material")
    material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = nodes.get("Principled BSDF")
    color = nodes.new("ShaderNodeAttribute")
    color.attribute_name = "Col"
    material.node_tree.links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.6
    mesh.materials.append(material)

    obj = bpy.data.objects.new(spec.name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    world = np.eye(4)
    world[:3, :3] = np.asarray(spec.rotation) * spec.scale
    world[:3, 3] = spec.translation
    obj.matrix_world = Matrix(world.tolist())
    obj.pass_index = spec.pass_index
    obj.hide_render = not spec.visible


def _add_light(spec: Light, i: int) -> None:
    light = bpy.data.lights.new(f"light-{i}", spec.kind)
    light.energy = spec.energy
    light.color = spec.color[:3]
    if spec.kind == "SUN":
        light.angle = min(spec.size, 1.0)
    elif spec.kind == "AREA":
        light.size = spec.size
    else:
        light.shadow_soft_size = spec.size
    obj = bpy.data.objects.new(f"light-{i}", light)
    bpy.context.scene.collection.objects.link(obj)
    obj.location = spec.location
    # Lights shine down their local -Z: aim it at the origin.
    obj.rotation_euler = (-Vector(spec.location)).to_track_quat("-Z", "Y").to_euler()


def _set_world(strength: float, color) -> None:
    world = bpy.data.worlds.new("flywheel-world")
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    background.inputs["Color"].default_value = (*color[:3], 1.0)
    background.inputs["Strength"].default_value = strength
    bpy.context.scene.world = world


def _read_exr(path: str) -> np.ndarray:
    image = bpy.data.images.load(path)
    try:
        w, h = image.size
        pixels = np.empty(w * h * image.channels, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        return pixels.reshape(h, w, image.channels)[::-1, :, 0]  # Blender rows are bottom-up
    finally:
        bpy.data.images.remove(image)


def render(scene: Scene, out_dir: str | os.PathLike) -> list[dict]:
    """Render every camera of ``scene``; returns per camera the files written and the
    pure Cycles time (seconds inside ``bpy.ops.render.render``)."""
    import time

    out_dir = str(Path(out_dir).resolve())
    clear_scene()
    if bpy.context.scene.camera is None or bpy.context.scene.camera.name not in bpy.data.objects:
        camera_data = bpy.data.cameras.new("camera")
        camera_obj = bpy.data.objects.new("camera", camera_data)
        bpy.context.scene.collection.objects.link(camera_obj)
        bpy.context.scene.camera = camera_obj
    camera_obj = bpy.context.scene.camera
    _configure(scene.settings, scene.cameras[0])
    output = _compositor(out_dir, scene.settings.passes)
    for spec in scene.objects:
        _add_object(spec)
    for i, spec in enumerate(scene.lights):
        _add_light(spec, i)
    _set_world(scene.world_strength, scene.world_color)

    results = []
    for view, camera in enumerate(scene.cameras):
        prefix = f"v{view:03d}"
        camera_obj.data.sensor_fit = "HORIZONTAL"
        camera_obj.data.sensor_width = 36.0
        camera_obj.data.lens = camera.fx * 36.0 / camera.width
        camera_obj.data.clip_start, camera_obj.data.clip_end = 0.01, 100.0
        camera_obj.matrix_world = Matrix(camera.blender_matrix_world().tolist())
        output.file_name = f"{prefix}_"
        bpy.context.scene.render.filepath = os.path.join(out_dir, f"{prefix}_rgba.png")
        start = time.perf_counter()
        bpy.ops.render.render(write_still="rgba" in scene.settings.passes)
        render_s = time.perf_counter() - start
        files = {}
        if "rgba" in scene.settings.passes:
            files["rgba"] = f"{prefix}_rgba.png"
        for name in ("depth", "index"):
            if name not in scene.settings.passes:
                continue
            exr = os.path.join(out_dir, f"{prefix}_{name}.exr")
            values = _read_exr(exr)
            os.unlink(exr)
            if name == "depth":
                values = np.where(values < 1e9, values, 0.0).astype(np.float32)
            else:
                values = np.rint(values).astype(np.uint8)
            np.save(os.path.join(out_dir, f"{prefix}_{name}.npy"), values)
            files[name] = f"{prefix}_{name}.npy"
        results.append({"view": view, "files": files, "render_s": render_s})
    return results
