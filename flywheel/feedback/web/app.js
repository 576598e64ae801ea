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

const form = document.getElementById("judgement");
if (form) {
  form.addEventListener("submit", () => {
    form.elements.time_spent_s.value = Math.max(0.1, (performance.now() - started) / 1000).toFixed(1);
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "INPUT" && event.target.type !== "radio") return;
    const choices = form.querySelectorAll("input[name=choice]");
    if (event.key >= "1" && event.key <= "9" && Number(event.key) < choices.length) {
      choices[Number(event.key) - 1].checked = true;
    } else if (event.key === "0") {
      choices[choices.length - 1].checked = true;
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
