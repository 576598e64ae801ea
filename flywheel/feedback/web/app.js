// The task page: one three.js viewer per candidate (orbit, zoom), keyboard shortcuts, and
// the time spent on the task, sent with the judgement.
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";

const started = performance.now();
const loader = new GLTFLoader();
window.viewersReady = 0;

function viewer(canvas) {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0xf4f5f7);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x667080, 2.2));
  const sun = new THREE.DirectionalLight(0xffffff, 1.6);
  sun.position.set(1.5, 2, 2.5);
  scene.add(sun);
  const camera = new THREE.PerspectiveCamera(35, canvas.width / canvas.height, 0.01, 50);
  camera.position.set(1.3, 1.0, 1.6);
  const controls = new OrbitControls(camera, canvas);
  controls.enableDamping = false;
  const draw = () => renderer.render(scene, camera);
  controls.addEventListener("change", draw);
  loader.load(
    canvas.dataset.glb,
    (gltf) => {
      // one matte material for every candidate: judge the shape, not the export's shading
      gltf.scene.traverse((node) => {
        if (node.isMesh) {
          node.geometry.computeVertexNormals();
          node.material = new THREE.MeshStandardMaterial({
            color: 0xb4c0d4, metalness: 0, roughness: 0.75, flatShading: true, side: THREE.DoubleSide,
          });
        }
      });
      scene.add(gltf.scene);
      // frame the shape: look at its centre from a distance that fits its bounding sphere
      const sphere = new THREE.Box3().setFromObject(gltf.scene).getBoundingSphere(new THREE.Sphere());
      const distance = sphere.radius / Math.sin(THREE.MathUtils.degToRad(camera.fov / 2)) * 1.15;
      camera.position.copy(sphere.center).add(new THREE.Vector3(0.55, 0.45, 0.7).normalize().multiplyScalar(distance));
      controls.target.copy(sphere.center);
      controls.update();
      draw();
      canvas.dataset.ready = "1";
      window.viewersReady += 1;
    },
    undefined,
    (error) => {
      canvas.dataset.ready = "error";
      canvas.title = `could not load this shape: ${error}`;
    },
  );
}

document.querySelectorAll("canvas.viewer").forEach(viewer);

// Layout alignment: the chosen candidate's voxels drawn over the photo at its pose, which the
// sliders change (a rotation about the camera's axes, a shift, a scale); a moved slider
// sends the aligned pose with the judgement.
const photo = document.getElementById("photo");
const overlay = document.getElementById("overlay");
const align = document.getElementById("align");
const voxels = {};
let chosen = null;

function matmul(a, b) {
  const out = new Array(9).fill(0);
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 3; k++) out[3 * i + j] += a[3 * i + k] * b[3 * k + j];
  return out;
}
function axisRotation(axis, degrees) {
  const c = Math.cos((degrees * Math.PI) / 180), s = Math.sin((degrees * Math.PI) / 180);
  if (axis === 0) return [1, 0, 0, 0, c, -s, 0, s, c];
  if (axis === 1) return [c, 0, s, 0, 1, 0, -s, 0, c];
  return [c, -s, 0, s, c, 0, 0, 0, 1];
}
function slider(name) {
  return Number(align.querySelector(`input[name=${name}]`).value);
}
function alignedPose() {
  const pose = JSON.parse(chosen.dataset.pose);
  const turn = matmul(axisRotation(0, slider("pitch")), matmul(axisRotation(1, slider("yaw")), axisRotation(2, slider("roll"))));
  return {
    R: matmul(turn, pose.R),
    t: [pose.t[0] + slider("dx"), pose.t[1] + slider("dy"), Math.max(0.05, pose.t[2] + slider("dz"))],
    s: pose.s * Math.exp(slider("ds")),
  };
}
function moved() {
  return [...align.querySelectorAll("input.pose")].some((input) => Number(input.value) !== 0);
}
let hovered = null; // a candidate under the pointer: its silhouette at its predicted layout

function drawSilhouette() {
  const ctx = overlay.getContext("2d");
  overlay.width = photo.clientWidth;
  overlay.height = photo.clientHeight;
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const shown = hovered || chosen;
  if (!shown || !voxels[shown.dataset.id]) return;
  const K = JSON.parse(photo.dataset.k), zoom = photo.clientWidth / Number(photo.dataset.width);
  const pose = shown === chosen ? alignedPose() : JSON.parse(shown.dataset.pose), grid = voxels[shown.dataset.id];
  ctx.fillStyle = "rgb(0, 200, 255)"; // opaque: overlapping voxels make one silhouette (the canvas is translucent)
  for (const [x, y, z] of grid.points) {
    const p = [0, 1, 2].map((i) => pose.s * (pose.R[3 * i] * x + pose.R[3 * i + 1] * y + pose.R[3 * i + 2] * z) + pose.t[i]);
    if (p[2] <= 0) continue;
    const u = (K[0] * p[0]) / p[2] + K[2], v = (K[4] * p[1]) / p[2] + K[5];
    const size = Math.max(1.5, (K[0] * pose.s) / grid.resolution / p[2] * zoom);
    ctx.fillRect(u * zoom - size / 2, v * zoom - size / 2, size, size);
  }
  if (chosen) form.elements.aligned_pose.value = moved() ? JSON.stringify(alignedPose()) : "";
}
async function load(label) {
  const id = label.querySelector("input").value;
  label.dataset.id = id;
  if (!voxels[id]) voxels[id] = await (await fetch(`/voxels/${id}.json`)).json();
}
async function choose(label) {
  chosen = label && label.dataset.pose ? label : null;
  align.disabled = !chosen;
  if (!chosen) form.elements.aligned_pose.value = "";
  if (chosen) await load(chosen);
  drawSilhouette();
}
document.querySelectorAll("label.candidate[data-pose]").forEach((label) => {
  label.addEventListener("mouseenter", async () => {
    hovered = label;
    await load(label);
    drawSilhouette();
  });
  label.addEventListener("mouseleave", () => {
    hovered = null;
    drawSilhouette();
  });
});

const form = document.getElementById("judgement");
if (form) {
  form.querySelectorAll("input[name=choice]").forEach((input) =>
    input.addEventListener("change", () => {
      align.querySelectorAll("input.pose").forEach((slider) => (slider.value = 0));
      choose(input.closest("label"));
    }),
  );
  align.addEventListener("input", drawSilhouette);
  document.getElementById("align-reset").addEventListener("click", () => {
    align.querySelectorAll("input.pose").forEach((slider) => (slider.value = 0));
    drawSilhouette();
  });
  photo.addEventListener("load", drawSilhouette);
  const checked = form.querySelector("input[name=choice]:checked");
  if (checked) choose(checked.closest("label"));
  form.addEventListener("submit", () => {
    form.elements.time_spent_s.value = Math.max(0.1, (performance.now() - started) / 1000).toFixed(1);
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" && event.target.type !== "radio") return;
    const choices = form.querySelectorAll("input[name=choice]");
    if (event.key >= "1" && event.key <= "9" && Number(event.key) < choices.length) {
      choices[Number(event.key) - 1].checked = true;
      choices[Number(event.key) - 1].dispatchEvent(new Event("change"));
    } else if (event.key === "0") {
      choices[choices.length - 1].checked = true;
      choices[choices.length - 1].dispatchEvent(new Event("change"));
    } else if (event.key === "Enter") {
      event.preventDefault();
      form.requestSubmit();
    } else if (event.key === "s" || event.key === "S") {
      document.getElementById("skip").click();
    } else if ((event.key === "u" || event.key === "U") && document.getElementById("undo")) {
      document.getElementById("undo").requestSubmit();
    }
  });
}
