// The browser viewer of `sceneloc serve` (GET /viewer): the map's point cloud (GET /v1/maps/{name}/points.ply) and
// the camera of every localization on that map, pushed live over the WebSocket /v1/maps/{name}/events; with
// `serve --reconstruct`, the mesh the streamed frames make (GET /v1/maps/{name}/mesh.ply), fetched again at each
// new version the events announce.
//
// Bundled by esbuild (`npm run build` in viewer/) into sceneloc/serve/static/viewer.js, which viewer.html loads.
// Authentication is the server's HttpOnly cookie: every request below is same-origin and carries it; the page
// never sees the token.
//
// Conventions: poses are cam_from_world (x_cam = R x_world + t, qvec_wxyz = (w, x, y, z)), OpenCV camera axes (x right,
// y down, z forward), metres. The world's up direction is unknown in general: +z until poses arrive, then the
// mean of the cameras' up (-y camera axis in the world).
//
// window.scenelocViewer is the page's state for tests, updated live:
//   points     number of points loaded, -1 while loading
//   frustums   camera frustums drawn (at most MAX_FRUSTUMS)
//   poses      pose messages received (successful or not)
//   failed     pose messages with cam_from_world null
//   connected  the events WebSocket is open
//   error      the latest error (loading, WebSocket, WebGL), or null
//   map, type, clients (trajectories drawn), renders (frames drawn), lastInliers, lastMs: for the overlay/tests
//   meshVersion, meshVertices  the live mesh shown (0 / 0 before any)

import * as THREE from 'three';
import { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
import { PLYLoader } from 'three/examples/jsm/loaders/PLYLoader.js';

const MAX_FRUSTUMS = 300;
const MAX_TRAJECTORY_POINTS = 5000; // per client; the oldest centres are dropped beyond
const RECONNECT_MS = 1000;
const FRUSTUM_DEPTH_FRACTION = 0.05; // of the cloud's bounding-box diagonal
const FRUSTUM_DEPTH_NO_CLOUD = 0.1; // metres
const INLIERS_RED = 10;
const INLIERS_GREEN = 300;
const TRAJECTORY_COLOURS = [0x4fc3f7, 0xba68c8, 0xffffff, 0xff8a65, 0x4db6ac, 0xf06292, 0x9575cd, 0xaed581];

const state = {
  points: -1,
  frustums: 0,
  poses: 0,
  failed: 0,
  connected: false,
  error: null,
  map: null,
  type: null,
  clients: 0,
  renders: 0,
  lastInliers: null,
  lastMs: null,
  meshVersion: 0,
  meshVertices: 0,
};
window.scenelocViewer = state;

let loadError = null; // persistent: the maps list, the cloud, WebGL
let socketError = null; // cleared when the WebSocket opens again

function setError() {
  state.error = loadError || socketError;
  updateOverlay();
}

function failLoad(message) {
  console.error('sceneloc viewer: ' + message);
  loadError = loadError ? loadError + '; ' + message : message;
  setError();
}

// ---------------------------------------------------------------------------------------------------------------
// The overlay (top-left): plain HTML filled from `state`.

const $ = (id) => document.getElementById(id);

function text(id, value) {
  const el = $(id);
  if (el) el.textContent = value;
}

function updateOverlay() {
  text('ov-map', state.map === null ? '…' : state.map + (state.type ? ' (' + state.type + ')' : ''));
  text('ov-points', state.points < 0 ? 'loading…' : state.points.toLocaleString('en-US'));
  text('ov-mesh', state.meshVersion === 0 ? '–'
    : state.meshVertices.toLocaleString('en-US') + ' vertices (v' + state.meshVersion + ')');
  text('ov-ws', state.connected ? 'connected' : socketError ? 'reconnecting' : 'connecting…');
  const ws = $('ov-ws');
  if (ws) ws.className = state.connected ? 'ok' : 'bad';
  text('ov-frustums', String(state.frustums) + (state.frustums >= MAX_FRUSTUMS ? ' (latest ' + MAX_FRUSTUMS + ')' : ''));
  text('ov-locs', (state.poses - state.failed) + ' ok / ' + state.failed + ' failed');
  text('ov-last', state.lastInliers === null ? '–'
    : state.lastInliers + ' inliers, ' + (state.lastMs === null ? '?' : state.lastMs.toFixed(0)) + ' ms');
  const err = $('ov-error');
  if (err) {
    err.textContent = state.error || '';
    err.style.display = state.error ? 'block' : 'none';
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The 3D scene. Rendered on demand (controls, data, resize), not every animation frame: software GL is slow.

const scene = new THREE.Scene();
scene.background = new THREE.Color(0x15171c);
const camera = new THREE.PerspectiveCamera(55, 1, 0.01, 1000);
camera.up.set(0, 0, 1);
let renderer = null;
let controls = null;
let renderQueued = false;
let userMoved = false;

const view = {
  centre: new THREE.Vector3(0, 0, 0),
  size: new THREE.Vector3(2, 2, 2), // the robust bounding box of the cloud (or of the camera centres)
  fromCloud: false,
  up: new THREE.Vector3(0, 0, 1),
};

function requestRender() {
  if (!renderer || renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderer.render(scene, camera);
    state.renders += 1;
  });
}

function setUpRenderer() {
  const container = $('view');
  try {
    renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  } catch (e) {
    renderer = null;
    failLoad('WebGL is not available in this browser (' + (e && e.message ? e.message : e) + ')');
    return;
  }
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  container.appendChild(renderer.domElement);
  renderer.domElement.addEventListener('pointerdown', () => { userMoved = true; });
  renderer.domElement.addEventListener('wheel', () => { userMoved = true; }, { passive: true });
  resize();
  window.addEventListener('resize', resize);
  makeControls();
}

function makeControls() {
  // OrbitControls reads camera.up when it is made: a new up direction needs new controls.
  if (!renderer) return;
  if (controls) controls.dispose();
  controls = new OrbitControls(camera, renderer.domElement);
  controls.enableDamping = false;
  controls.screenSpacePanning = true;
  controls.target.copy(view.centre);
  controls.addEventListener('change', requestRender);
  controls.update();
}

function resize() {
  if (!renderer) return;
  const w = Math.max(1, window.innerWidth);
  const h = Math.max(1, window.innerHeight);
  renderer.setSize(w, h);
  camera.aspect = w / h;
  camera.updateProjectionMatrix();
  requestRender();
}

function diagonal() {
  return view.size.length();
}

// Places the camera to see the whole box from above one corner, looking at its centre, `view.up` up.
function frameView() {
  const up = view.up.clone().normalize();
  const helper = Math.abs(up.z) < 0.9 ? new THREE.Vector3(0, 0, 1) : new THREE.Vector3(1, 0, 0);
  const a = new THREE.Vector3().crossVectors(up, helper).normalize();
  const b = new THREE.Vector3().crossVectors(up, a).normalize();
  const direction = a.multiplyScalar(-0.8).add(b.multiplyScalar(-1.0)).add(up.clone().multiplyScalar(0.9)).normalize();
  const radius = Math.max(0.5 * diagonal(), 0.05);
  const halfFov = THREE.MathUtils.degToRad(camera.fov) / 2;
  const fit = Math.min(halfFov, Math.atan(Math.tan(halfFov) * Math.min(camera.aspect, 1)));
  const distance = radius / Math.sin(fit);
  camera.up.copy(up);
  camera.position.copy(view.centre).addScaledVector(direction, distance);
  camera.near = Math.max(distance / 1000, 1e-4);
  camera.far = distance * 20 + diagonal() * 10;
  camera.updateProjectionMatrix();
  camera.lookAt(view.centre);
  makeControls();
  requestRender();
}

// The 2nd-98th percentile box of (a sample of) the points: a few stray points do not shrink the view.
function robustBox(positions, count) {
  const step = Math.max(1, Math.floor(count / 20000));
  const axes = [[], [], []];
  for (let i = 0; i < count; i += step) {
    for (let k = 0; k < 3; k++) {
      const v = positions[3 * i + k];
      if (Number.isFinite(v)) axes[k].push(v);
    }
  }
  const lo = new THREE.Vector3();
  const hi = new THREE.Vector3();
  for (let k = 0; k < 3; k++) {
    const values = axes[k].sort((x, y) => x - y);
    if (values.length === 0) return null;
    const pick = (q) => values[Math.min(values.length - 1, Math.max(0, Math.round(q * (values.length - 1))))];
    lo.setComponent(k, pick(0.02));
    hi.setComponent(k, pick(0.98));
  }
  return { lo, hi };
}

// ---------------------------------------------------------------------------------------------------------------
// Loading: the maps list, then the chosen map's cloud, then the events.

async function fetchChecked(url) {
  let response;
  try {
    response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new Error('GET ' + url + ' failed: ' + (e && e.message ? e.message : e));
  }
  if (!response.ok) {
    let detail = '';
    try {
      detail = (await response.text()).slice(0, 200);
    } catch (e) {
      detail = '';
    }
    throw new Error('GET ' + url + ': HTTP ' + response.status + (detail ? ' ' + detail : ''));
  }
  return response;
}

function fillMapSelect(maps, current) {
  const select = $('map-select');
  if (!select) return;
  select.textContent = '';
  for (const m of maps) {
    const option = document.createElement('option');
    option.value = m.name;
    option.textContent = m.name;
    option.selected = m.name === current;
    select.appendChild(option);
  }
  select.disabled = maps.length < 2;
  select.addEventListener('change', () => {
    const params = new URLSearchParams(window.location.search);
    params.set('map', select.value);
    window.location.search = '?' + params.toString();
  });
}

async function loadCloud(name) {
  const url = '/v1/maps/' + encodeURIComponent(name) + '/points.ply';
  let geometry;
  try {
    const buffer = await (await fetchChecked(url)).arrayBuffer();
    geometry = new PLYLoader().parse(buffer);
  } catch (e) {
    failLoad(e && e.message ? e.message : String(e));
    state.points = 0;
    updateOverlay();
    return;
  }
  const position = geometry.getAttribute('position');
  const count = position ? position.count : 0;
  state.points = count;
  if (count > 0) {
    const material = new THREE.PointsMaterial({
      size: 2,
      sizeAttenuation: false,
      vertexColors: Boolean(geometry.getAttribute('color')),
      color: geometry.getAttribute('color') ? 0xffffff : 0xb0b0b0,
    });
    scene.add(new THREE.Points(geometry, material));
    const box = robustBox(position.array, count);
    if (box) {
      view.centre.copy(box.lo).add(box.hi).multiplyScalar(0.5);
      view.size.copy(box.hi).sub(box.lo);
      if (diagonal() < 1e-6) view.size.set(1, 1, 1);
      view.fromCloud = true;
    }
  }
  updateOverlay();
  frameView();
}

async function start() {
  updateOverlay();
  setUpRenderer();
  let maps;
  try {
    const body = await (await fetchChecked('/v1/maps')).json();
    maps = Array.isArray(body.maps) ? body.maps : [];
  } catch (e) {
    failLoad(e && e.message ? e.message : String(e));
    state.points = 0;
    updateOverlay();
    return;
  }
  if (maps.length === 0) {
    failLoad('the server has no maps');
    state.points = 0;
    updateOverlay();
    return;
  }
  const wanted = new URLSearchParams(window.location.search).get('map');
  let chosen = maps[0];
  if (wanted !== null) {
    chosen = maps.find((m) => m.name === wanted);
    if (!chosen) {
      failLoad('no map named "' + wanted + '" (maps: ' + maps.map((m) => m.name).join(', ') + ')');
      state.points = 0;
      fillMapSelect(maps, null);
      updateOverlay();
      return;
    }
  }
  state.map = chosen.name;
  state.type = chosen.type || null;
  document.title = 'sceneloc: ' + chosen.name;
  fillMapSelect(maps, chosen.name);
  updateOverlay();
  await loadCloud(chosen.name);
  connect(chosen.name);
}

// ---------------------------------------------------------------------------------------------------------------
// Events: one JSON message per localization on the map.

function connect(name) {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = scheme + '//' + window.location.host + '/v1/maps/' + encodeURIComponent(name) + '/events';
  let socket;
  try {
    socket = new WebSocket(url);
  } catch (e) {
    socketError = 'WebSocket ' + url + ': ' + (e && e.message ? e.message : e);
    setError();
    setTimeout(() => connect(name), RECONNECT_MS);
    return;
  }
  socket.addEventListener('open', () => {
    state.connected = true;
    socketError = null;
    setError();
  });
  socket.addEventListener('message', (event) => {
    if (typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (e) {
      console.warn('sceneloc viewer: a message that is not JSON: ' + String(event.data).slice(0, 100));
      return;
    }
    if (message && message.type === 'pose') onPose(message);
    if (message && message.type === 'mesh') loadMesh(name, message.version);
  });
  socket.addEventListener('close', (event) => {
    state.connected = false;
    socketError = 'WebSocket closed (code ' + event.code + (event.reason ? ', ' + event.reason : '') + '); reconnecting';
    console.warn('sceneloc viewer: ' + socketError);
    setError();
    setTimeout(() => connect(name), RECONNECT_MS);
  });
}

// 0 at <= INLIERS_RED inliers, 1 at >= INLIERS_GREEN, log scale in between; red -> yellow -> green.
function inlierColour(numInliers) {
  const n = Math.max(1, Number(numInliers) || 0);
  const t = THREE.MathUtils.clamp(
    (Math.log(n) - Math.log(INLIERS_RED)) / (Math.log(INLIERS_GREEN) - Math.log(INLIERS_RED)), 0, 1);
  // In sRGB, as the legend's CSS gradient: three.js would read HSL in its linear working space (hues shift).
  return new THREE.Color().setHSL((t * 120) / 360, 1.0, 0.5, THREE.SRGBColorSpace);
}

const frustums = []; // oldest first
const trajectories = new Map(); // client -> {centres: [Vector3], line: THREE.Line}
const upSum = new THREE.Vector3();
let upCount = 0;

function poseFromMessage(cfw) {
  const q = cfw.qvec_wxyz;
  const t = cfw.tvec;
  if (!Array.isArray(q) || q.length !== 4 || !Array.isArray(t) || t.length !== 3) return null;
  if (![...q, ...t].every((v) => Number.isFinite(v))) return null;
  const rotation = new THREE.Quaternion(q[1], q[2], q[3], q[0]).normalize(); // three's order: x, y, z, w
  const worldFromCam = rotation.clone().invert(); // R^T
  const tvec = new THREE.Vector3(t[0], t[1], t[2]);
  const centre = tvec.clone().applyQuaternion(worldFromCam).negate(); // C = -R^T t
  // X_world = R^T (X_cam - t) = R^T X_cam + C
  const toWorld = (x, y, z) => new THREE.Vector3(x, y, z).applyQuaternion(worldFromCam).add(centre);
  return { worldFromCam, centre, toWorld };
}

function frustumLines(pose, intrinsics, depth) {
  const K = intrinsics || {};
  const W = Number(K.width) > 0 ? Number(K.width) : 640;
  const H = Number(K.height) > 0 ? Number(K.height) : 480;
  const fx = Number(K.fx) > 0 ? Number(K.fx) : W;
  const fy = Number(K.fy) > 0 ? Number(K.fy) : fx;
  const cx = Number.isFinite(Number(K.cx)) && K.cx !== null ? Number(K.cx) : W / 2;
  const cy = Number.isFinite(Number(K.cy)) && K.cy !== null ? Number(K.cy) : H / 2;
  const corner = (u, v) => pose.toWorld(((u - cx) / fx) * depth, ((v - cy) / fy) * depth, depth);
  const c = [corner(0, 0), corner(W, 0), corner(W, H), corner(0, H)];
  // A small triangle above the image's top edge marks the camera's up.
  const tip = corner(cx, -0.25 * H);
  const o = pose.centre;
  const segments = [o, c[0], o, c[1], o, c[2], o, c[3], c[0], c[1], c[1], c[2], c[2], c[3], c[3], c[0],
    c[0], tip, tip, c[1]];
  const array = new Float32Array(segments.length * 3);
  segments.forEach((p, i) => p.toArray(array, 3 * i));
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute('position', new THREE.BufferAttribute(array, 3));
  return geometry;
}

function addToTrajectory(client, centre) {
  let trajectory = trajectories.get(client);
  if (!trajectory) {
    const colour = TRAJECTORY_COLOURS[trajectories.size % TRAJECTORY_COLOURS.length];
    const line = new THREE.Line(new THREE.BufferGeometry(),
      new THREE.LineBasicMaterial({ color: colour, transparent: true, opacity: 0.8 }));
    line.frustumCulled = false;
    scene.add(line);
    trajectory = { centres: [], line };
    trajectories.set(client, trajectory);
    state.clients = trajectories.size;
  }
  trajectory.centres.push(centre.clone());
  if (trajectory.centres.length > MAX_TRAJECTORY_POINTS) trajectory.centres.shift();
  trajectory.line.geometry.dispose();
  trajectory.line.geometry = new THREE.BufferGeometry().setFromPoints(trajectory.centres);
}

// Without a cloud the view frames the camera centres seen so far.
function growViewToCameras() {
  if (view.fromCloud) return false;
  const box = new THREE.Box3();
  for (const f of frustums) box.expandByPoint(f.centre);
  if (box.isEmpty()) return false;
  box.getCenter(view.centre);
  box.getSize(view.size);
  view.size.max(new THREE.Vector3(1, 1, 1));
  return true;
}

// The live mesh: one object, replaced by each newer version; a fetch that an even newer version overtook is dropped.
let meshObject = null;
let meshWanted = 0;

async function loadMesh(name, version) {
  if (!(version > meshWanted)) return;
  meshWanted = version;
  let geometry;
  try {
    const buffer = await (await fetchChecked('/v1/maps/' + encodeURIComponent(name) + '/mesh.ply')).arrayBuffer();
    geometry = new PLYLoader().parse(buffer);
  } catch (e) {
    console.warn('sceneloc viewer: mesh v' + version + ': ' + (e && e.message ? e.message : e));
    return;
  }
  if (version < meshWanted) return;
  geometry.computeVertexNormals();
  const material = new THREE.MeshBasicMaterial({
    vertexColors: Boolean(geometry.getAttribute('color')),
    color: geometry.getAttribute('color') ? 0xffffff : 0xb0b0b0,
    side: THREE.DoubleSide,
  });
  if (meshObject) {
    scene.remove(meshObject);
    meshObject.geometry.dispose();
    meshObject.material.dispose();
  }
  meshObject = new THREE.Mesh(geometry, material);
  scene.add(meshObject);
  state.meshVersion = version;
  state.meshVertices = geometry.getAttribute('position').count;
  updateOverlay();
  requestRender();
}

function onPose(message) {
  state.poses += 1;
  state.lastInliers = Number.isFinite(message.num_inliers) ? message.num_inliers : null;
  state.lastMs = Number.isFinite(message.ms) ? message.ms : null;
  const pose = message.cam_from_world ? poseFromMessage(message.cam_from_world) : null;
  if (!pose) {
    state.failed += 1;
    updateOverlay();
    return;
  }
  const depth = view.fromCloud ? FRUSTUM_DEPTH_FRACTION * diagonal() : FRUSTUM_DEPTH_NO_CLOUD;
  const lines = new THREE.LineSegments(frustumLines(pose, message.intrinsics, depth),
    new THREE.LineBasicMaterial({ color: inlierColour(message.num_inliers) }));
  scene.add(lines);
  frustums.push({ lines, centre: pose.centre });
  while (frustums.length > MAX_FRUSTUMS) {
    const old = frustums.shift();
    scene.remove(old.lines);
    old.lines.geometry.dispose();
    old.lines.material.dispose();
  }
  state.frustums = frustums.length;
  addToTrajectory(String(message.client ?? ''), pose.centre);

  // The cameras' up (-y camera axis in the world) replaces the default +z once, at the first poses, while the user
  // has not moved the view; later poses only refine the mean used by the next reframing.
  upSum.add(new THREE.Vector3(0, -1, 0).applyQuaternion(pose.worldFromCam));
  upCount += 1;
  const reframe = growViewToCameras() || upCount <= 3;
  if (reframe && !userMoved && upSum.lengthSq() > 1e-12) {
    view.up.copy(upSum).normalize();
    frameView();
  }
  updateOverlay();
  requestRender();
}

start().catch((e) => failLoad('viewer failed: ' + (e && e.stack ? e.stack : e)));
