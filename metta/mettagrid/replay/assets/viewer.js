// metta replay viewer: reads the replay embedded in this page (format v2, docs/replay_format.md) and draws
// it on a canvas. Everything the page needs is in the page; it makes no network request.
//
// window.metta exposes the viewer's state (step, selection, what the last frame drew) and a few actions, so
// scripts and tests can drive it the way a user does. Read-only views: metta.state (step, playing, speed,
// selected, showVision, allActions, grid, follow, sort), metta.lastDraw ({step, scale, agents: [{agent_id, x,
// y, color, radius, halo}] (radius and halo in CSS pixels), vision: the observation window drawn, {agent_id, x,
// y, w, h} in cells, or null, follow: whether the camera followed an agent}), metta.hoverText (the tooltip's
// text, or null), metta.summary, metta.view (scale and offset of the map). The summary's tables carry ids
// (#sum-env, #sum-steps, #sum-groups, #sum-actions, #sum-agents) and data-group / data-action / data-agent on
// their rows; the legend's types rows data-type.
//
// Steps: frame k of the file is the state after env step k+1 (docs/replay_format.md section 2). The page
// counts env steps everywhere ("step k+1 / T", T the episode's length); metta.state.step is the frame index k.
(function () {
  'use strict';

  const M = (window.metta = { ready: false, error: null, frames: 0, lastDraw: null });
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------------------------------------------
  // Errors: any failure shows a message, never a blank page.
  function showError(message) {
    const text = String(message || 'unknown error');
    if (M.error) return; // the first error is the one that explains
    M.error = text;
    $('error-text').textContent = text;
    $('error').hidden = false;
    $('step-label').textContent = 'error';
  }
  window.addEventListener('error', (e) => showError(e.message || String(e.error)));
  window.addEventListener('unhandledrejection', (e) => showError((e.reason && e.reason.message) || String(e.reason)));

  // ------------------------------------------------------------------------------------------------------
  // Colours
  const GROUP_COLORS = ['#4e79a7', '#f28e2b', '#e15759', '#59a14f', '#b07aa1', '#edc948', '#76b7b2', '#ff9da7',
    '#9c755f', '#bab0ac'];
  const TYPE_COLORS = {
    wall: '#596273', block: '#a0785a', altar: '#d9488c', armory: '#8f9aa8', lasery: '#e8743b', lab: '#9b59b6',
    factory: '#6c8a9a', temple: '#e5c63f', mine_red: '#c0392b', mine_blue: '#2e6fd1', mine_green: '#2e9e4f',
    generator_red: '#ff7b6b', generator_blue: '#6fa8ff', generator_green: '#6fdc8c',
  };
  const TYPE_LETTERS = {
    altar: 'A', armory: 'Ar', lasery: 'L', lab: 'Lb', factory: 'F', temple: 'T', mine_red: 'M', mine_blue: 'M',
    mine_green: 'M', generator_red: 'G', generator_blue: 'G', generator_green: 'G',
  };
  const ACTION_COLORS = {
    noop: '#3b4252', move: '#4e79a7', rotate: '#76b7b2', attack: '#e15759', attack_nearest: '#e15759',
    get_items: '#59a14f', put_items: '#f28e2b', swap: '#b07aa1', change_color: '#edc948', change_glyph: '#ff9da7',
  };
  const FLOOR = '#1b2130';
  // An agent is a disc of at least AGENT_MIN_R CSS pixels with a light halo around it, so that it stays
  // visible at any zoom: a 176x180 map fitted to a laptop screen has about 4 pixels per cell.
  const AGENT_MIN_R = 5;
  const HALO = 'rgba(240, 244, 250, 0.85)';
  // Below this many pixels per cell a building is drawn in its legend colour alone, with no state marks.
  const DETAIL_SCALE = 10;
  // The follow camera keeps the selected agent at least this fraction of the view from its edges.
  const FOLLOW_MARGIN = 0.2;
  const BACKGROUND = '#0b0d12';
  const FROZEN = '#9be7ff';

  function hashColor(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
    return `hsl(${h % 360}, 55%, 55%)`;
  }
  const typeColor = (name) => TYPE_COLORS[name] || hashColor(name);
  const actionColor = (name) => ACTION_COLORS[name] || hashColor(name);
  // Groups are coloured in the order of their ids among the replay's agents (the first group blue, ...).
  const groupColor = (g) => {
    const rank = R && R.groupRank.has(g) ? R.groupRank.get(g) : g;
    return GROUP_COLORS[((rank % GROUP_COLORS.length) + GROUP_COLORS.length) % GROUP_COLORS.length];
  };
  function rgb(css) {
    const c = document.createElement('canvas').getContext('2d');
    c.fillStyle = css;
    const v = c.fillStyle; // normalized to #rrggbb
    return [parseInt(v.slice(1, 3), 16), parseInt(v.slice(3, 5), 16), parseInt(v.slice(5, 7), 16)];
  }

  // ------------------------------------------------------------------------------------------------------
  // Decoding: base64 -> zlib (DecompressionStream "deflate") -> JSON
  function base64ToBytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  async function inflate(bytes) {
    if (typeof DecompressionStream === 'undefined') {
      throw new Error('this browser cannot decompress the replay (it needs DecompressionStream: Chrome 80+, ' +
        'Firefox 113+, Safari 16.4+)');
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    try {
      return await new Response(stream).text();
    } catch (e) {
      throw new Error('replay: the data is not a complete zlib stream (' + e.message + ')');
    }
  }

  // ------------------------------------------------------------------------------------------------------
  // The replay model: per-step arrays for agents and converters, constants for walls.
  function fail(msg) { throw new Error('replay: ' + msg); }
  const isInt = Number.isInteger;

  function isSeries(v, kind) {
    if (!Array.isArray(v) || v.length === 0 || !Array.isArray(v[0])) return false;
    if (kind === 'pairs') return v[0].length === 2 && Array.isArray(v[0][1]);
    return true;
  }

  // Fills out[0..n-1] from a constant or a [[step, value], ...] series; check(value) returns a problem or ''.
  function expandInto(out, v, kind, n, where, key, check) {
    if (!isSeries(v, kind)) {
      const problem = check(v);
      if (problem) fail(`${where} key '${key}': ${problem}, got ${short(v)}`);
      for (let s = 0; s < n; s++) out[s] = v;
      return out;
    }
    let prev = -1;
    for (let j = 0; j < v.length; j++) {
      const e = v[j];
      if (!Array.isArray(e) || e.length !== 2 || !isInt(e[0])) fail(`${where} key '${key}': series entry ${j} must be [step, value]`);
      if (j === 0 && e[0] !== 0) fail(`${where} key '${key}': a series must start at step 0`);
      // A last entry at step n that repeats the previous value is padding no frame shows (docs/replay_format.md 4.1).
      const padding = j > 0 && j === v.length - 1 && e[0] === n && JSON.stringify(e[1]) === JSON.stringify(v[j - 1][1]);
      if (e[0] <= prev || (e[0] >= n && !padding)) fail(`${where} key '${key}': series entry ${j} has step ${e[0]} (steps increase, below max_steps ${n})`);
      const problem = check(e[1]);
      if (problem) fail(`${where} key '${key}': series entry ${j}: ${problem}, got ${short(e[1])}`);
      prev = e[0];
    }
    let j = 0;
    let cur = v[0][1];
    for (let s = 0; s < n; s++) {
      while (j < v.length && v[j][0] <= s) { cur = v[j][1]; j++; }
      out[s] = cur;
    }
    return out;
  }
  function short(v) {
    let t;
    try { t = JSON.stringify(v); } catch (e) { t = String(v); }
    if (t === undefined) t = String(v);
    return t.length > 60 ? t.slice(0, 57) + '...' : t;
  }
  const checkNum = (v) => (typeof v === 'number' && Number.isFinite(v) ? '' : 'expected a number');
  const checkInt = (v) => (isInt(v) ? '' : 'expected an integer');
  const checkBool = (v) => (typeof v === 'boolean' ? '' : 'expected true or false');

  function buildReplay(d) {
    if (!d || typeof d !== 'object' || Array.isArray(d)) fail('the top level must be a JSON object');
    if (d.version !== 2) fail(`'version' is ${short(d.version)}; this viewer reads version 2`);
    for (const k of ['num_agents', 'max_steps', 'map_size', 'action_names', 'item_names', 'type_names', 'objects']) {
      if (!(k in d)) fail(`missing top-level key '${k}'`);
    }
    const n = d.max_steps;
    if (!isInt(n) || n < 1) fail(`'max_steps' must be an integer >= 1, got ${short(n)}`);
    if (!Array.isArray(d.map_size) || d.map_size.length !== 2 || !d.map_size.every((v) => isInt(v) && v > 0)) {
      fail(`'map_size' must be [width, height], got ${short(d.map_size)}`);
    }
    for (const k of ['action_names', 'item_names', 'type_names']) {
      if (!Array.isArray(d[k]) || !d[k].every((s) => typeof s === 'string')) fail(`'${k}' must be a list of strings`);
    }
    if (!Array.isArray(d.objects) || d.objects.length === 0) fail("'objects' must be a non-empty list");
    const env = d.env_config && typeof d.env_config === 'object' ? d.env_config : {};
    const R = {
      n, W: d.map_size[0], H: d.map_size[1], numAgents: d.num_agents,
      typeNames: d.type_names, actionNames: d.action_names, itemNames: d.item_names,
      groupNames: Array.isArray(d.group_names) ? d.group_names : [],
      fileName: d.file_name || '', env, meta: env.metta && typeof env.metta === 'object' ? env.metta : {},
      objects: [], agents: [], converters: [], statics: [], movers: [],
    };
    const inMap = (p) => {
      if (!Array.isArray(p) || p.length < 2 || !isInt(p[0]) || !isInt(p[1])) return 'expected [x, y, z]';
      return p[0] >= 0 && p[0] < R.W && p[1] >= 0 && p[1] < R.H ? '' : `expected a location inside the ${R.W}x${R.H} map`;
    };
    const pairsOk = (v) => {
      if (!Array.isArray(v)) return 'expected [[item_id, count], ...]';
      for (const p of v) {
        if (!Array.isArray(p) || p.length !== 2 || !isInt(p[0]) || p[0] < 0 || p[0] >= R.itemNames.length ||
            typeof p[1] !== 'number') return 'expected [[item_id, count], ...] with known item ids';
      }
      return '';
    };
    const seenAgents = new Set();
    d.objects.forEach((o, i) => {
      if (!o || typeof o !== 'object' || Array.isArray(o)) fail(`objects[${i}] must be an object`);
      const where = `objects[${i}] (id ${short(o.id)})`;
      if (!isInt(o.id)) fail(`${where}: 'id' must be an integer`);
      const typeName = R.typeNames[o.type_id];
      if (!isInt(o.type_id) || typeName === undefined) fail(`${where}: 'type_id' ${short(o.type_id)} names no type`);
      if (!('location' in o)) fail(`${where}: missing key 'location'`);
      const obj = { id: o.id, typeId: o.type_id, typeName, raw: o };
      const locs = expandInto(new Array(n), o.location, 'location', n, where, 'location', inMap);
      if (typeName === 'agent') {
        const aid = o.agent_id;
        if (!isInt(aid) || aid < 0 || aid >= R.numAgents) fail(`${where}: an agent needs 'agent_id' in 0..${R.numAgents - 1}`);
        if (seenAgents.has(aid)) fail(`${where}: agent_id ${aid} is used twice`);
        seenAgents.add(aid);
        obj.kind = 'agent';
        obj.agentId = aid;
        obj.groupId = isInt(o.group_id) ? o.group_id : 0;
        obj.frozenTime = isInt(o.frozen_time) ? o.frozen_time : (isInt(o.freeze_duration) ? o.freeze_duration : 0);
        obj.visionSize = isInt(o.vision_size) ? o.vision_size : 11;
        obj.inventoryMax = isInt(o.inventory_max) ? o.inventory_max : 0;
        obj.xs = new Int16Array(n);
        obj.ys = new Int16Array(n);
        for (let s = 0; s < n; s++) { obj.xs[s] = locs[s][0]; obj.ys[s] = locs[s][1]; }
        const get = (key, def) => (key in o ? o[key] : def);
        obj.orient = expandInto(new Int8Array(n), get('orientation', 0), 'int', n, where, 'orientation', checkInt);
        obj.actionId = expandInto(new Int16Array(n), get('action_id', 0), 'int', n, where, 'action_id', checkInt);
        obj.actionParam = expandInto(new Int16Array(n), get('action_param', get('action_parameter', 0)), 'int', n, where, 'action_param', checkInt);
        obj.success = expandInto(new Array(n), get('action_success', false), 'bool', n, where, 'action_success', checkBool);
        obj.reward = expandInto(new Float64Array(n), get('current_reward', 0), 'number', n, where, 'current_reward', checkNum);
        obj.total = expandInto(new Float64Array(n), get('total_reward', 0), 'number', n, where, 'total_reward', checkNum);
        obj.frozen = expandInto(new Array(n), get('is_frozen', false), 'bool', n, where, 'is_frozen', checkBool);
        obj.frozenLeft = expandInto(new Int32Array(n), get('frozen_progress', get('freeze_remaining', 0)), 'int', n, where, 'frozen_progress', checkInt);
        obj.inventory = expandInto(new Array(n), get('inventory', []), 'pairs', n, where, 'inventory', pairsOk);
        obj.color = expandInto(new Int16Array(n), get('color', 0), 'int', n, where, 'color', checkInt);
        for (let s = 0; s < n; s++) {
          if (obj.actionId[s] < 0 || obj.actionId[s] >= R.actionNames.length) fail(`${where} key 'action_id': ${obj.actionId[s]} at step ${s} names no action`);
        }
        R.agents.push(obj);
      } else if ('input_resources' in o) {
        obj.kind = 'converter';
        obj.x = locs[0][0];
        obj.y = locs[0][1];
        const get = (key, def) => (key in o ? o[key] : def);
        obj.inventory = expandInto(new Array(n), get('inventory', []), 'pairs', n, where, 'inventory', pairsOk);
        obj.converting = expandInto(new Array(n), get('is_converting', false), 'bool', n, where, 'is_converting', checkBool);
        obj.cooling = expandInto(new Array(n), get('is_cooling_down', false), 'bool', n, where, 'is_cooling_down', checkBool);
        obj.prodProgress = expandInto(new Int32Array(n), get('production_progress', 0), 'int', n, where, 'production_progress', checkInt);
        obj.coolProgress = expandInto(new Int32Array(n), get('cooldown_progress', 0), 'int', n, where, 'cooldown_progress', checkInt);
        obj.prodTime = isInt(o.production_time) ? o.production_time : 0;
        obj.coolTime = isInt(o.cooldown_time) ? o.cooldown_time : 0;
        obj.input = pairsOk(o.input_resources) ? [] : o.input_resources;
        obj.output = pairsOk(o.output_resources || []) ? [] : (o.output_resources || []);
        obj.recipeMax = isInt(o.recipe_max) ? o.recipe_max : -1;
        R.converters.push(obj);
      } else {
        obj.kind = 'static';
        obj.swappable = o.is_swappable === true;
        if (isSeries(o.location, 'location')) {
          obj.xs = new Int16Array(n);
          obj.ys = new Int16Array(n);
          for (let s = 0; s < n; s++) { obj.xs[s] = locs[s][0]; obj.ys[s] = locs[s][1]; }
          R.movers.push(obj);
        } else {
          obj.x = locs[0][0];
          obj.y = locs[0][1];
          R.statics.push(obj);
        }
      }
      R.objects.push(obj);
    });
    if (seenAgents.size !== R.numAgents) fail(`'num_agents' is ${R.numAgents} but ${seenAgents.size} objects are agents`);
    R.agents.sort((a, b) => a.agentId - b.agentId);
    R.groupRank = new Map([...new Set(R.agents.map((a) => a.groupId))].sort((p, q) => p - q).map((g, i) => [g, i]));
    R.vision = [R.meta.obs_width || R.agents[0].visionSize, R.meta.obs_height || R.agents[0].visionSize];
    const end = R.meta.episode_end;
    R.end = end && typeof end === 'object' && isInt(end.step) ? end : null;
    // The episode's length in env steps; when the recording stopped first, the steps it holds.
    R.totalSteps = R.end ? R.end.step + 1 : n;
    R.envName = String(env.label || R.meta.task || 'unnamed env');
    return R;
  }

  // ------------------------------------------------------------------------------------------------------
  // Viewer state
  let R = null;
  const state = {
    step: 0, playing: false, speed: 10, selected: null,
    showVision: true, allActions: false, grid: true, follow: true,
    sort: { key: 'total', dir: -1 },
  };
  M.state = state;
  const view = { s: 16, ox: 0, oy: 0 };
  let dirty = true;
  let panelsStep = -1;
  let staticLayer = null;
  let traceLayer = null;
  const SPEEDS = [1, 2, 5, 10, 20, 30, 60, 120, 240];

  const mapCanvas = $('map');
  const mapCtx = mapCanvas.getContext('2d', { alpha: false });
  const mini = $('minimap');
  const miniCtx = mini.getContext('2d');
  const trace = $('trace');
  const traceCtx = trace.getContext('2d');
  const TRACE_GUTTER = 28;

  function markDirty() { dirty = true; }

  function setStep(k) {
    if (!R) return;
    const s = Math.max(0, Math.min(R.n - 1, Math.round(k)));
    if (s !== state.step) { state.step = s; dirty = true; }
    $('scrubber').value = String(state.step);
  }
  function setPlaying(on) {
    if (!R) return;
    if (on && state.step >= R.n - 1) setStep(0);
    state.playing = on;
    $('btn-play').textContent = on ? '||' : '▶';
    dirty = true;
  }
  function setSpeed(v) {
    state.speed = v;
    $('speed').value = String(v);
  }
  function select(sel) {
    state.selected = sel;
    dirty = true;
    panelsStep = -1;
  }
  function selectAgent(agentId) {
    const a = R.agents[agentId];
    if (a) select({ kind: 'agent', id: a.id, agentId });
  }
  function selectedAgent() {
    return state.selected && state.selected.kind === 'agent' ? R.agents[state.selected.agentId] : null;
  }

  // ------------------------------------------------------------------------------------------------------
  // Map view: cell (x, y) is drawn at (ox + x*s, oy + y*s) in CSS pixels.
  function mapSize() { return [mapCanvas.clientWidth, mapCanvas.clientHeight]; }
  function fit() {
    const [cw, ch] = mapSize();
    view.s = Math.max(0.5, Math.min(cw / R.W, ch / R.H) * 0.96);
    view.ox = (cw - R.W * view.s) / 2;
    view.oy = (ch - R.H * view.s) / 2;
    dirty = true;
  }
  function zoomAt(factor, px, py) {
    const s = Math.max(0.5, Math.min(160, view.s * factor));
    const cx = (px - view.ox) / view.s;
    const cy = (py - view.oy) / view.s;
    view.s = s;
    view.ox = px - cx * s;
    view.oy = py - cy * s;
    dirty = true;
  }
  function centerOn(x, y) {
    const [cw, ch] = mapSize();
    view.ox = cw / 2 - (x + 0.5) * view.s;
    view.oy = ch / 2 - (y + 0.5) * view.s;
    dirty = true;
  }
  // The follow camera: with an agent selected, pan just enough to keep it FOLLOW_MARGIN of the view away from
  // the edges (nothing to do while the whole map is on screen).
  function followSelected() {
    const a = selectedAgent();
    if (!a || !state.follow) return;
    const [cw, ch] = mapSize();
    if (R.W * view.s <= cw && R.H * view.s <= ch) return;
    const m = Math.min(cw, ch) * FOLLOW_MARGIN;
    const px = view.ox + (a.xs[state.step] + 0.5) * view.s, py = view.oy + (a.ys[state.step] + 0.5) * view.s;
    if (px < m) view.ox += m - px;
    else if (px > cw - m) view.ox -= px - (cw - m);
    if (py < m) view.oy += m - py;
    else if (py > ch - m) view.oy -= py - (ch - m);
  }
  // Zoom keys and the wheel zoom around the followed agent, else around (px, py).
  function zoomAround(factor, px, py) {
    const a = state.follow ? selectedAgent() : null;
    if (a) zoomAt(factor, view.ox + (a.xs[state.step] + 0.5) * view.s, view.oy + (a.ys[state.step] + 0.5) * view.s);
    else zoomAt(factor, px, py);
  }
  function setFollow(on) {
    state.follow = on;
    $('opt-follow').checked = on;
    dirty = true;
  }
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    const [cw, ch] = mapSize();
    mapCanvas.width = Math.max(1, Math.round(cw * dpr));
    mapCanvas.height = Math.max(1, Math.round(ch * dpr));
    trace.width = Math.max(1, Math.round(trace.clientWidth * dpr));
    trace.height = Math.max(1, Math.round(trace.clientHeight * dpr));
    dirty = true;
  }

  function buildStaticLayer() {
    const T = Math.max(1, Math.min(16, Math.floor(4096 / Math.max(R.W, R.H))));
    const c = document.createElement('canvas');
    c.width = R.W * T;
    c.height = R.H * T;
    const g = c.getContext('2d');
    g.fillStyle = FLOOR;
    g.fillRect(0, 0, c.width, c.height);
    for (const o of R.statics) {
      g.fillStyle = typeColor(o.typeName);
      if (o.typeName === 'wall') {
        g.fillRect(o.x * T, o.y * T, T, T);
      } else {
        const m = Math.max(1, Math.round(T * 0.12));
        g.fillRect(o.x * T + m, o.y * T + m, T - 2 * m, T - 2 * m);
      }
    }
    staticLayer = c;
  }

  function roundRect(g, x, y, w, h, r) {
    g.beginPath();
    g.moveTo(x + r, y);
    g.arcTo(x + w, y, x + w, y + h, r);
    g.arcTo(x + w, y + h, x, y + h, r);
    g.arcTo(x, y + h, x, y, r);
    g.arcTo(x, y, x + w, y, r);
    g.closePath();
  }

  const DIRS = [[0, -1], [0, 1], [-1, 0], [1, 0]]; // orientation -> (dx, dy): up, down, left, right

  function agentAt(x, y, step) {
    for (const a of R.agents) if (a.xs[step] === x && a.ys[step] === y) return a;
    return null;
  }

  // The cells an attack reaches (3 rows ahead x 3 columns, nearest first: centre, left, right) and its target.
  function attackCells(a, prev) {
    const [dx, dy] = DIRS[a.orient[prev]] || DIRS[0];
    const rx = -dy, ry = dx;
    const cells = [];
    for (let dist = 1; dist <= 3; dist++) {
      for (const lat of [0, -1, 1]) cells.push([a.xs[prev] + dx * dist + rx * lat, a.ys[prev] + dy * dist + ry * lat]);
    }
    return cells;
  }

  function drawArrow(g, x0, y0, x1, y1, color, width) {
    const ang = Math.atan2(y1 - y0, x1 - x0);
    const head = Math.max(4, width * 2.5);
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = width;
    g.beginPath();
    g.moveTo(x0, y0);
    g.lineTo(x1 - Math.cos(ang) * head * 0.8, y1 - Math.sin(ang) * head * 0.8);
    g.stroke();
    g.beginPath();
    g.moveTo(x1, y1);
    g.lineTo(x1 - Math.cos(ang - 0.45) * head, y1 - Math.sin(ang - 0.45) * head);
    g.lineTo(x1 - Math.cos(ang + 0.45) * head, y1 - Math.sin(ang + 0.45) * head);
    g.closePath();
    g.fill();
  }

  function drawCross(g, cx, cy, r, color, width) {
    g.strokeStyle = color;
    g.lineWidth = width;
    g.beginPath();
    g.moveTo(cx - r, cy - r); g.lineTo(cx + r, cy + r);
    g.moveTo(cx + r, cy - r); g.lineTo(cx - r, cy + r);
    g.stroke();
  }

  // The action an agent took on the step into frame `step`, drawn from where it stood before that step.
  function drawAction(g, a, step, strong) {
    const s = view.s;
    const name = R.actionNames[a.actionId[step]] || '';
    const ok = a.success[step];
    const prev = Math.max(0, step - 1);
    const px = a.xs[prev], py = a.ys[prev];
    const [dx, dy] = DIRS[a.orient[prev]] || DIRS[0];
    const cx = (x) => view.ox + (x + 0.5) * s;
    const cy = (y) => view.oy + (y + 0.5) * s;
    const lw = Math.max(1.5, s * (strong ? 0.1 : 0.07));
    const col = ok ? '#ffffff' : '#ff6b6b';
    g.save();
    g.globalAlpha = strong ? 0.95 : 0.7;
    if (name === 'move') {
      const back = a.actionParam[step] === 1;
      const tx = px + (back ? -dx : dx), ty = py + (back ? -dy : dy);
      drawArrow(g, cx(px), cy(py), cx(tx), cy(ty), col, lw);
      if (!ok) drawCross(g, cx(tx), cy(ty), s * 0.18, '#ff6b6b', lw);
    } else if (name.startsWith('attack')) {
      const cells = attackCells(a, prev);
      g.fillStyle = ok ? 'rgba(225, 87, 89, 0.22)' : 'rgba(225, 87, 89, 0.10)';
      g.strokeStyle = '#e15759';
      g.lineWidth = Math.max(1, lw * 0.6);
      for (const [x, y] of cells) {
        g.fillRect(view.ox + x * s, view.oy + y * s, s, s);
        g.strokeRect(view.ox + x * s + 0.5, view.oy + y * s + 0.5, s - 1, s - 1);
      }
      if (ok) {
        let found = 0;
        for (const [x, y] of cells) {
          const t = agentAt(x, y, prev);
          if (t && t !== a) {
            if (found === a.actionParam[step]) { drawCross(g, cx(x), cy(y), s * 0.45, '#ff3030', lw * 1.3); break; }
            found++;
          }
        }
      }
    } else if (name === 'get_items' || name === 'put_items' || name === 'swap') {
      const tx = px + dx, ty = py + dy;
      const c = name === 'get_items' ? '#59d16f' : name === 'put_items' ? '#f2a43b' : '#c58ad6';
      g.strokeStyle = ok ? c : '#ff6b6b';
      g.lineWidth = lw;
      g.setLineDash(ok ? [] : [s * 0.12, s * 0.1]);
      g.strokeRect(view.ox + tx * s + lw, view.oy + ty * s + lw, s - 2 * lw, s - 2 * lw);
      g.setLineDash([]);
      if (name === 'get_items') drawArrow(g, cx(tx), cy(ty), cx(px) + dx * s * 0.3, cy(py) + dy * s * 0.3, ok ? c : '#ff6b6b', lw);
      else if (name === 'put_items') drawArrow(g, cx(px) + dx * s * 0.3, cy(py) + dy * s * 0.3, cx(tx), cy(ty), ok ? c : '#ff6b6b', lw);
      else {
        drawArrow(g, cx(px), cy(py), cx(tx), cy(ty), ok ? c : '#ff6b6b', lw);
        drawArrow(g, cx(tx), cy(ty), cx(px), cy(py), ok ? c : '#ff6b6b', lw);
      }
    }
    g.restore();
  }

  // A building: a rounded square in its legend colour. From DETAIL_SCALE pixels per cell up, its state is
  // drawn inside it, never over its whole face (so the colour always matches the legend): a white pie while
  // converting, a dark disc with an arc while cooling down, a yellow badge with the count of output waiting.
  function drawConverter(g, o, step) {
    const s = view.s;
    const x = view.ox + o.x * s, y = view.oy + o.y * s;
    const m = s * 0.08;
    g.fillStyle = typeColor(o.typeName);
    roundRect(g, x + m, y + m, s - 2 * m, s - 2 * m, s * 0.18);
    g.fill();
    if (s < DETAIL_SCALE) return;
    const cx = x + s / 2, cy = y + s / 2;
    if (o.cooling[step] || o.converting[step]) {
      g.fillStyle = 'rgba(0, 0, 0, 0.45)';
      g.beginPath();
      g.arc(cx, cy, s * 0.3, 0, 2 * Math.PI);
      g.fill();
    }
    if (o.cooling[step]) {
      const f = o.coolTime > 0 ? o.coolProgress[step] / o.coolTime : 0;
      g.strokeStyle = '#d8dee9';
      g.lineWidth = Math.max(1, s * 0.07);
      g.beginPath();
      g.arc(cx, cy, s * 0.22, -Math.PI / 2, -Math.PI / 2 + 2 * Math.PI * f);
      g.stroke();
    } else if (o.converting[step]) {
      const f = o.prodTime > 0 ? o.prodProgress[step] / o.prodTime : 0;
      g.fillStyle = 'rgba(255, 255, 255, 0.8)';
      g.beginPath();
      g.moveTo(cx, cy);
      g.arc(cx, cy, s * 0.26, -Math.PI / 2, -Math.PI / 2 + 2 * Math.PI * Math.max(0.05, f));
      g.closePath();
      g.fill();
    } else if (s >= 16) {
      g.fillStyle = 'rgba(0, 0, 0, 0.65)';
      g.font = `bold ${Math.round(s * 0.38)}px sans-serif`;
      g.textAlign = 'center';
      g.textBaseline = 'middle';
      g.fillText(TYPE_LETTERS[o.typeName] || o.typeName.slice(0, 1).toUpperCase(), cx, cy + 1);
    }
    // Output held: a badge in the top-right corner with the number of items inside.
    let held = 0;
    for (const [, count] of o.inventory[step]) held += count;
    if (held > 0) {
      const r = s * 0.16;
      g.fillStyle = '#ffe066';
      g.beginPath();
      g.arc(x + s - r - m * 0.5, y + r + m * 0.5, r, 0, 2 * Math.PI);
      g.fill();
      if (s >= 22) {
        g.fillStyle = '#222';
        g.font = `bold ${Math.round(r * 1.3)}px sans-serif`;
        g.textAlign = 'center';
        g.textBaseline = 'middle';
        g.fillText(String(held), x + s - r - m * 0.5, y + r + m * 0.5 + 0.5);
      }
    }
  }

  const agentRadius = (s) => Math.max(AGENT_MIN_R, s * 0.42);
  const haloWidth = (r) => Math.max(3, r * 0.3);

  function drawAgent(g, a, step, selected) {
    const s = view.s;
    const cx = view.ox + (a.xs[step] + 0.5) * s, cy = view.oy + (a.ys[step] + 0.5) * s;
    const r = agentRadius(s);
    const halo = haloWidth(r);
    // The halo (light blue while frozen) sets the agent off the floor, walls and buildings at any zoom.
    g.fillStyle = a.frozen[step] ? FROZEN : HALO;
    g.beginPath();
    g.arc(cx, cy, r + halo, 0, 2 * Math.PI);
    g.fill();
    g.fillStyle = groupColor(a.groupId);
    g.beginPath();
    g.arc(cx, cy, r, 0, 2 * Math.PI);
    g.fill();
    // Orientation: a notch at the edge the agent faces.
    const [dx, dy] = DIRS[a.orient[step]] || DIRS[0];
    const tipX = cx + dx * r, tipY = cy + dy * r;
    const bx = cx + dx * r * 0.45, by = cy + dy * r * 0.45;
    g.fillStyle = '#0b0d12';
    g.beginPath();
    g.moveTo(tipX, tipY);
    g.lineTo(bx - dy * r * 0.35, by + dx * r * 0.35);
    g.lineTo(bx + dy * r * 0.35, by - dx * r * 0.35);
    g.closePath();
    g.fill();
    if (selected) {
      const lw = Math.max(2, s * 0.08);
      g.strokeStyle = '#ffffff';
      g.lineWidth = lw;
      g.beginPath();
      g.arc(cx, cy, r + halo + lw, 0, 2 * Math.PI);
      g.stroke();
    }
    if (s >= 28) {
      g.fillStyle = '#e5e9f0';
      g.font = `${Math.round(s * 0.24)}px sans-serif`;
      g.textAlign = 'left';
      g.textBaseline = 'top';
      g.fillText(String(a.agentId), view.ox + a.xs[step] * s + 1, view.oy + a.ys[step] * s + 1);
    }
    return r;
  }

  function render() {
    const t0 = performance.now();
    dirty = false;
    M.frames++;
    followSelected();
    const dpr = window.devicePixelRatio || 1;
    const [cw, ch] = mapSize();
    const g = mapCtx;
    const s = view.s;
    const step = state.step;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = BACKGROUND;
    g.fillRect(0, 0, cw, ch);
    g.imageSmoothingEnabled = false;
    g.drawImage(staticLayer, view.ox, view.oy, R.W * s, R.H * s);
    // The visible cells, with a margin of one cell or an agent's drawn size; objects outside are not drawn.
    const margin = 1 + Math.ceil((2 * agentRadius(s)) / s);
    const x0 = Math.floor(-view.ox / s) - margin, x1 = Math.ceil((cw - view.ox) / s) + margin;
    const y0 = Math.floor(-view.oy / s) - margin, y1 = Math.ceil((ch - view.oy) / s) + margin;
    const visible = (x, y) => x >= x0 && x <= x1 && y >= y0 && y <= y1;
    if (state.grid && s >= 10) {
      g.strokeStyle = 'rgba(255, 255, 255, 0.05)';
      g.lineWidth = 1;
      g.beginPath();
      for (let x = Math.max(0, x0); x <= Math.min(R.W, x1); x++) {
        const X = Math.round(view.ox + x * s) + 0.5;
        g.moveTo(X, view.oy); g.lineTo(X, view.oy + R.H * s);
      }
      for (let y = Math.max(0, y0); y <= Math.min(R.H, y1); y++) {
        const Y = Math.round(view.oy + y * s) + 0.5;
        g.moveTo(view.ox, Y); g.lineTo(view.ox + R.W * s, Y);
      }
      g.stroke();
    }
    for (const o of R.movers) {
      const x = o.xs[step], y = o.ys[step];
      if (!visible(x, y)) continue;
      const m = s * 0.12;
      g.fillStyle = typeColor(o.typeName);
      g.fillRect(view.ox + x * s + m, view.oy + y * s + m, s - 2 * m, s - 2 * m);
    }
    for (const o of R.converters) if (visible(o.x, o.y)) drawConverter(g, o, step);
    const sel = selectedAgent();
    let vision = null;
    if (sel && state.showVision) {
      const [vw, vh] = R.vision;
      const vx = sel.xs[step] - Math.floor(vw / 2), vy = sel.ys[step] - Math.floor(vh / 2);
      vision = { agent_id: sel.agentId, x: vx, y: vy, w: vw, h: vh };
      g.fillStyle = 'rgba(136, 192, 208, 0.07)';
      g.fillRect(view.ox + vx * s, view.oy + vy * s, vw * s, vh * s);
      g.strokeStyle = 'rgba(136, 192, 208, 0.85)';
      g.lineWidth = Math.max(1, s * 0.05);
      g.setLineDash([Math.max(3, s * 0.25), Math.max(2, s * 0.15)]);
      g.strokeRect(view.ox + vx * s, view.oy + vy * s, vw * s, vh * s);
      g.setLineDash([]);
    }
    // Actions under the agents, so every agent's body stays visible.
    if (state.allActions) {
      for (const a of R.agents) if (a !== sel && visible(a.xs[step], a.ys[step])) drawAction(g, a, step, false);
    }
    if (sel) drawAction(g, sel, step, true);
    const drawn = [];
    for (const a of R.agents) {
      const x = a.xs[step], y = a.ys[step];
      if (!visible(x, y)) continue;
      const r = drawAgent(g, a, step, a === sel);
      drawn.push({ agent_id: a.agentId, x, y, color: groupColor(a.groupId), radius: r, halo: haloWidth(r) });
    }
    if (state.selected && state.selected.kind !== 'agent') {
      const o = R.objects.find((q) => q.id === state.selected.id);
      if (o) {
        const x = o.xs ? o.xs[step] : o.x, y = o.ys ? o.ys[step] : o.y;
        g.strokeStyle = '#ffffff';
        g.lineWidth = Math.max(1.5, s * 0.08);
        g.strokeRect(view.ox + x * s, view.oy + y * s, s, s);
      }
    }
    M.lastDraw = { step, scale: s, agents: drawn, vision, follow: !!(state.follow && sel) };
    renderMinimap();
    renderTrace();
    if (panelsStep !== step) {
      panelsStep = step;
      updateStepLabel();
      updateSelectionPanel();
      updateAgentTable();
    }
    updateHover();
    const ms = performance.now() - t0;
    M.renderMs = M.renderMs === undefined ? ms : M.renderMs * 0.9 + ms * 0.1;
  }

  function updateStepLabel() {
    $('step-label').textContent = `step ${state.step + 1} / ${R.totalSteps}`;
  }

  // ------------------------------------------------------------------------------------------------------
  // Minimap: the whole map, the agents and the visible part of the view.
  let miniScale = 1;
  function setupMinimap() {
    const maxSide = 170;
    miniScale = Math.max(1, Math.floor(maxSide / Math.max(R.W, R.H)));
    if (Math.max(R.W, R.H) * miniScale > maxSide) miniScale = maxSide / Math.max(R.W, R.H);
    mini.style.width = `${Math.round(R.W * miniScale)}px`;
    mini.style.height = `${Math.round(R.H * miniScale)}px`;
    const dpr = window.devicePixelRatio || 1;
    mini.width = Math.round(R.W * miniScale * dpr);
    mini.height = Math.round(R.H * miniScale * dpr);
    mini.hidden = false;
  }
  function renderMinimap() {
    const dpr = window.devicePixelRatio || 1;
    const g = miniCtx;
    const k = miniScale;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.imageSmoothingEnabled = true;
    g.drawImage(staticLayer, 0, 0, R.W * k, R.H * k);
    const step = state.step;
    for (const o of R.converters) {
      g.fillStyle = typeColor(o.typeName);
      g.fillRect(o.x * k, o.y * k, Math.max(1.5, k), Math.max(1.5, k));
    }
    const r = Math.max(2.5, k * 0.8);
    for (const a of R.agents) {
      g.fillStyle = groupColor(a.groupId);
      g.strokeStyle = HALO;
      g.lineWidth = 1;
      g.beginPath();
      g.arc(a.xs[step] * k + k / 2, a.ys[step] * k + k / 2, r, 0, 2 * Math.PI);
      g.fill();
      g.stroke();
    }
    const [cw, ch] = mapSize();
    g.strokeStyle = '#ffffff';
    g.lineWidth = 1;
    g.strokeRect((-view.ox / view.s) * k, (-view.oy / view.s) * k, (cw / view.s) * k, (ch / view.s) * k);
  }

  // ------------------------------------------------------------------------------------------------------
  // Trace: one row per agent, one column per step; colour = action, dark = failed, yellow top = reward,
  // light blue = frozen.
  function buildTraceLayer() {
    const n = R.n;
    trace.style.height = `${Math.min(150, Math.max(36, R.agents.length * 12))}px`;
    const rowH = Math.max(2, Math.min(10, Math.floor(220 / R.agents.length)));
    const c = document.createElement('canvas');
    c.width = n;
    c.height = R.agents.length * rowH;
    const g = c.getContext('2d');
    const img = g.createImageData(c.width, c.height);
    const px = img.data;
    const colors = R.actionNames.map((name) => rgb(actionColor(name)));
    const frozen = rgb(FROZEN);
    const set = (x, y, [r, gg, b]) => {
      const i = (y * n + x) * 4;
      px[i] = r; px[i + 1] = gg; px[i + 2] = b; px[i + 3] = 255;
    };
    R.agents.forEach((a, row) => {
      for (let s = 0; s < n; s++) {
        const base = colors[a.actionId[s]] || [128, 128, 128];
        const failed = !a.success[s];
        const col = a.frozen[s] ? frozen : failed ? base.map((v) => Math.round(v * 0.35)) : base;
        const y0 = row * rowH;
        for (let y = 0; y < rowH - (rowH > 3 ? 1 : 0); y++) set(s, y0 + y, col);
        if (failed && !a.frozen[s] && rowH >= 4) set(s, y0 + rowH - 2, [230, 70, 70]);
        if (a.reward[s] > 0) set(s, y0, [255, 230, 80]);
        else if (a.reward[s] < 0) set(s, y0, [200, 40, 200]);
      }
    });
    g.putImageData(img, 0, 0);
    traceLayer = { canvas: c, rowH };
  }
  function traceGeometry() {
    const w = trace.clientWidth, h = trace.clientHeight;
    const rows = R.agents.length;
    const rowH = Math.min(h / rows, 14);
    return { w, h, plotW: w - TRACE_GUTTER, rowH, rows };
  }
  function renderTrace() {
    const dpr = window.devicePixelRatio || 1;
    const g = traceCtx;
    const { w, h, plotW, rowH, rows } = traceGeometry();
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.fillStyle = '#0c0f14';
    g.fillRect(0, 0, w, h);
    g.imageSmoothingEnabled = R.n > plotW;
    g.drawImage(traceLayer.canvas, TRACE_GUTTER, 0, plotW, rowH * rows);
    g.fillStyle = '#8a93a6';
    g.font = `${Math.max(7, Math.min(11, rowH - 1))}px sans-serif`;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    const every = Math.max(1, Math.ceil(9 / rowH));
    for (let i = 0; i < rows; i += every) g.fillText(String(R.agents[i].agentId), TRACE_GUTTER - 4, (i + 0.5) * rowH);
    const sel = selectedAgent();
    if (sel) {
      g.strokeStyle = '#ffffff';
      g.lineWidth = 1;
      g.strokeRect(TRACE_GUTTER + 0.5, R.agents.indexOf(sel) * rowH + 0.5, plotW - 1, rowH - 1);
    }
    const x = TRACE_GUTTER + ((state.step + 0.5) / R.n) * plotW;
    g.strokeStyle = '#ffffff';
    g.lineWidth = 1.5;
    g.beginPath();
    g.moveTo(x, 0); g.lineTo(x, rowH * rows);
    g.stroke();
  }
  function traceHit(ev) {
    const rect = trace.getBoundingClientRect();
    const { plotW, rowH, rows } = traceGeometry();
    const x = ev.clientX - rect.left - TRACE_GUTTER, y = ev.clientY - rect.top;
    if (x < 0 || y < 0 || y >= rowH * rows) return null;
    const step = Math.min(R.n - 1, Math.floor((x / plotW) * R.n));
    return { step, agent: R.agents[Math.min(rows - 1, Math.floor(y / rowH))] };
  }

  // ------------------------------------------------------------------------------------------------------
  // Panels (DOM)
  const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const fmt = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(3));
  const itemName = (id) => R.itemNames[id] || `item ${id}`;
  const pairsText = (pairs) => (pairs.length ? pairs.map(([i, n]) => `${n} ${itemName(i)}`).join(', ') : 'nothing');
  const groupName = (g) => R.groupNames[g] || `group ${g}`;
  // A success rate with the decimals it needs: one that is neither none nor all never reads 0% or 100%
  // (1 of 223 is 0.4%).
  function rate(ok, count) {
    if (!count) return '-';
    const p = (100 * ok) / count;
    let d = 0;
    while (d < 6 && ok > 0 && ok < count && [0, 100].includes(Number(p.toFixed(d)))) d++;
    return `${p.toFixed(d)}%`;
  }
  function converterState(o, step) {
    return o.cooling[step] ? `cooling down (${o.coolProgress[step]} / ${o.coolTime})`
      : o.converting[step] ? `converting (${o.prodProgress[step]} / ${o.prodTime})` : 'idle';
  }
  // How the episode ended, in env steps (the topbar says it short, the summary in full).
  function episodeText(full) {
    const end = R.end;
    if (!end) return `${R.n} steps recorded, the episode had not ended`;
    const how = end.terminated ? 'terminated' : end.truncated ? 'truncated' : 'ended';
    if (end.step < R.n) return `${R.totalSteps} steps, ${how}`;
    return full
      ? `${R.totalSteps} steps, ${how}; step ${R.totalSteps} reset the env, so its state is not drawn (its rewards are in the totals)`
      : `${R.totalSteps} steps, ${how} (step ${R.totalSteps} not drawn)`;
  }
  function actionText(a, step) {
    const name = R.actionNames[a.actionId[step]] || `action ${a.actionId[step]}`;
    return `${name}(${a.actionParam[step]})`;
  }
  function inventoryRows(pairs, max) {
    if (!pairs.length) return '<tr><td colspan="2" class="hint">empty</td></tr>';
    return pairs.map(([i, n]) => `<tr class="inv-row" data-item="${esc(itemName(i))}"><td>${esc(itemName(i))}</td>` +
      `<td class="num">${n}${max ? ` / ${max}` : ''}</td></tr>`).join('');
  }

  function updateSelectionPanel() {
    const box = $('selection');
    const sel = state.selected;
    if (!sel) { box.innerHTML = '<span class="hint">Click an agent or a building on the map, in the trace or in the table.</span>'; return; }
    const step = state.step;
    if (sel.kind === 'agent') {
      const a = R.agents[sel.agentId];
      const ok = a.success[step];
      const frozen = a.frozen[step]
        ? `<span class="fail">frozen</span>, ${a.frozenLeft[step]} of ${a.frozenTime} steps left` : `no (a hit freezes it for ${a.frozenTime} steps)`;
      box.innerHTML = `<table class="kv">
        <tr><td>agent</td><td><span class="swatch round" style="background:${groupColor(a.groupId)}"></span>${a.agentId} (object ${a.id})</td></tr>
        <tr><td>group</td><td>${esc(groupName(a.groupId))} (${a.groupId})</td></tr>
        <tr><td>position</td><td>x ${a.xs[step]}, y ${a.ys[step]}, facing ${['up', 'down', 'left', 'right'][a.orient[step]] || a.orient[step]}</td></tr>
        <tr><td>reward this step</td><td id="sel-reward">${fmt(a.reward[step])}</td></tr>
        <tr><td>total reward</td><td id="sel-total">${fmt(a.total[step])}</td></tr>
        <tr><td>last action</td><td id="sel-action">${esc(actionText(a, step))} <span class="${ok ? 'ok' : 'fail'}">${ok ? 'succeeded' : 'failed'}</span></td></tr>
        <tr><td>frozen</td><td>${frozen}</td></tr>
      </table>
      <div style="margin-top:6px;color:var(--dim)">inventory</div>
      <table id="sel-inventory">${inventoryRows(a.inventory[step], a.inventoryMax)}</table>`;
      return;
    }
    const o = R.objects.find((q) => q.id === sel.id);
    if (!o) { box.textContent = ''; return; }
    if (o.kind === 'converter') {
      const prod = o.prodTime > 0 ? o.prodProgress[step] / o.prodTime : 0;
      const cool = o.coolTime > 0 ? o.coolProgress[step] / o.coolTime : 0;
      const status = converterState(o, step);
      box.innerHTML = `<table class="kv">
        <tr><td>building</td><td><span class="swatch" style="background:${typeColor(o.typeName)}"></span>${esc(o.typeName)} (object ${o.id})</td></tr>
        <tr><td>position</td><td>x ${o.x}, y ${o.y}</td></tr>
        <tr><td>recipe</td><td id="sel-recipe">${esc(pairsText(o.input))} → ${esc(pairsText(o.output))}</td></tr>
        <tr><td>takes</td><td>${o.prodTime} steps, then ${o.coolTime} steps of cooldown</td></tr>
        <tr><td>output limit</td><td>${o.recipeMax < 0 ? 'none' : o.recipeMax}</td></tr>
        <tr><td>state</td><td id="sel-state">${status}</td></tr>
      </table>
      <div>production</div><div class="bar"><div style="width:${(prod * 100).toFixed(1)}%"></div></div>
      <div>cooldown</div><div class="bar"><div style="width:${(cool * 100).toFixed(1)}%;background:#8a93a6"></div></div>
      <div style="margin-top:6px;color:var(--dim)">inventory</div>
      <table id="sel-inventory">${inventoryRows(o.inventory[step], 0)}</table>`;
      return;
    }
    const x = o.xs ? o.xs[step] : o.x, y = o.ys ? o.ys[step] : o.y;
    box.innerHTML = `<table class="kv"><tr><td>object</td><td>${esc(o.typeName)} (object ${o.id})</td></tr>
      <tr><td>position</td><td>x ${x}, y ${y}</td></tr>
      <tr><td>swappable</td><td>${o.swappable ? 'yes' : 'no'}</td></tr></table>`;
  }

  // The agents table fits the 360-pixel side panel: the group is the colour of the id's swatch (its name in
  // the tooltip) and the inventory is one column (sorted by the number of items held).
  const heldCount = (a, s) => a.inventory[s].reduce((t, [, n]) => t + n, 0);
  const COLUMNS = [
    { key: 'agent', label: '#', get: (a) => a.agentId },
    { key: 'total', label: 'reward', get: (a, s) => a.total[s], text: (a, s) => fmt(a.total[s]) },
    { key: 'reward', label: 'step', get: (a, s) => a.reward[s], text: (a, s) => fmt(a.reward[s]) },
    { key: 'action', label: 'action', get: (a, s) => a.actionId[s], text: (a, s) => actionText(a, s) + (a.success[s] ? '' : ' ✗') },
    { key: 'items', label: 'items', get: heldCount, text: (a, s) => (a.inventory[s].length ? pairsText(a.inventory[s]) : '') },
  ];
  const COLUMN_TITLES = {
    agent: 'agent id, in its group colour', total: 'total reward', reward: 'reward this step',
    action: 'the action taken into this step (✗: failed)', items: 'inventory (sorts by the number of items held)',
  };
  function buildAgentTable() {
    $('agent-table').tHead.innerHTML = '<tr>' + COLUMNS.map((c) =>
      `<th data-key="${c.key}" class="col-${c.key}" title="${esc(COLUMN_TITLES[c.key])}; click to sort">${c.label}</th>`).join('') + '</tr>';
    const body = $('agent-table').tBodies[0];
    body.innerHTML = '';
    for (const a of R.agents) {
      const tr = document.createElement('tr');
      tr.dataset.agent = String(a.agentId);
      tr.title = `agent ${a.agentId}, ${groupName(a.groupId)}`;
      tr.innerHTML = COLUMNS.map((c) => `<td class="col-${c.key}"></td>`).join('');
      tr.cells[0].innerHTML = `<span class="swatch round" style="background:${groupColor(a.groupId)}"></span><span></span>`;
      body.appendChild(tr);
      a.row = tr;
    }
  }
  function updateAgentTable() {
    const step = state.step;
    const sortCol = COLUMNS.find((c) => c.key === state.sort.key) || COLUMNS[1];
    const order = R.agents.slice().sort((p, q) => {
      const d = (sortCol.get(p, step) - sortCol.get(q, step)) * state.sort.dir;
      return d || p.agentId - q.agentId;
    });
    const body = $('agent-table').tBodies[0];
    const sel = selectedAgent();
    order.forEach((a, i) => {
      const cells = a.row.cells;
      COLUMNS.forEach((c, j) => {
        const t = c.text ? c.text(a, step) : String(c.get(a, step));
        const cell = j === 0 ? cells[0].lastChild : cells[j];
        if (cell.textContent !== t) {
          cell.textContent = t;
          if (j > 0) cells[j].title = t;
        }
      });
      a.row.classList.toggle('selected', a === sel);
      if (body.children[i] !== a.row) body.insertBefore(a.row, body.children[i] || null);
    });
    for (const th of $('agent-table').tHead.rows[0].cells) {
      th.classList.toggle('sorted', th.dataset.key === sortCol.key);
      th.textContent = th.textContent.replace(/ [▲▼]$/, '') + (th.dataset.key === sortCol.key ? (state.sort.dir < 0 ? ' ▼' : ' ▲') : '');
    }
  }

  function buildSummary() {
    const n = R.n;
    const end = R.end;
    const totals = R.agents.map((a) => (end && Array.isArray(end.total_rewards) ? end.total_rewards[a.agentId] : a.total[n - 1]));
    const groups = new Map();
    R.agents.forEach((a, i) => {
      const g = groups.get(a.groupId) || { sum: 0, count: 0 };
      g.sum += totals[i];
      g.count++;
      groups.set(a.groupId, g);
    });
    const heart = R.itemNames.indexOf('heart');
    const gained = (inv) => {
      if (heart < 0) return 0;
      let total = 0, prev = 0;
      for (let s = 0; s < n; s++) {
        let h = 0;
        for (const [i, c] of inv[s]) if (i === heart) h = c;
        if (s > 0 && h > prev) total += h - prev;
        prev = h;
      }
      return total;
    };
    const heartsMade = R.converters.reduce((t, o) => t + gained(o.inventory), 0);
    const heartsTaken = R.agents.reduce((t, a) => t + gained(a.inventory), 0);
    const counts = R.actionNames.map(() => [0, 0]);
    for (const a of R.agents) {
      for (let s = 0; s < n; s++) {
        const c = counts[a.actionId[s]];
        c[0]++;
        if (a.success[s]) c[1]++;
      }
    }
    const sum = totals.reduce((p, q) => p + q, 0);
    let html = `<table class="kv">
      <tr><td>environment</td><td id="sum-env">${esc(R.envName)}</td></tr>
      <tr><td>episode</td><td id="sum-steps">${esc(episodeText(true))}</td></tr>
      <tr><td>map</td><td>${R.W} x ${R.H}, ${R.numAgents} agents, ${R.converters.length} buildings</td></tr>
      <tr><td>reward, all agents</td><td id="sum-total">${fmt(sum)} (mean ${fmt(sum / R.agents.length)}, min ${fmt(Math.min(...totals))}, max ${fmt(Math.max(...totals))})</td></tr>`;
    if (heart >= 0) {
      html += `<tr><td>hearts made</td><td id="sum-hearts">${heartsMade} by buildings, ${heartsTaken} gained by agents</td></tr>`;
    }
    html += '</table><div style="margin-top:6px;color:var(--dim)">reward by group</div><table id="sum-groups">';
    html += '<tr><th>group</th><th class="num">agents</th><th class="num">total</th><th class="num">mean</th></tr>';
    for (const [g, v] of [...groups.entries()].sort((p, q) => p[0] - q[0])) {
      html += `<tr data-group="${g}"><td><span class="swatch round" style="background:${groupColor(g)}"></span>${esc(groupName(g))}</td>` +
        `<td class="num">${v.count}</td><td class="num">${fmt(v.sum)}</td><td class="num">${fmt(v.sum / v.count)}</td></tr>`;
    }
    html += '</table><div style="margin-top:6px;color:var(--dim)">actions (all agents, all steps)</div><table id="sum-actions">';
    html += '<tr><th>action</th><th class="num">count</th><th class="num">succeeded</th></tr>';
    R.actionNames.forEach((name, i) => {
      const [c, ok] = counts[i];
      html += `<tr data-action="${esc(name)}"><td><span class="swatch" style="background:${actionColor(name)}"></span>${esc(name)}</td>` +
        `<td class="num">${c}</td><td class="num" title="${ok} of ${c}">${rate(ok, c)}</td></tr>`;
    });
    html += '</table><div style="margin-top:6px;color:var(--dim)">reward by agent</div><table id="sum-agents">';
    R.agents.forEach((a, i) => {
      html += `<tr data-agent="${a.agentId}"><td>agent ${a.agentId}</td><td class="num">${fmt(totals[i])}</td></tr>`;
    });
    $('summary').innerHTML = html + '</table>';
    M.summary = { totals, heartsMade, heartsTaken, actionCounts: counts };
  }

  function buildLegend() {
    const typesPresent = new Map();
    for (const o of R.objects) typesPresent.set(o.typeName, (typesPresent.get(o.typeName) || 0) + 1);
    let html = '<table>';
    for (const [name, count] of [...typesPresent.entries()].sort()) {
      if (name === 'agent') continue;
      html += `<tr data-type="${esc(name)}"><td><span class="swatch" style="background:${typeColor(name)}"></span>${esc(name)}</td>` +
        `<td class="num">${count}</td></tr>`;
    }
    html += '</table><div style="margin-top:6px;color:var(--dim)">agents, by group</div><table>';
    const groupIds = [...new Set(R.agents.map((a) => a.groupId))].sort((p, q) => p - q);
    for (const g of groupIds) {
      html += `<tr><td><span class="swatch round" style="background:${groupColor(g)}"></span>${esc(groupName(g))}</td>` +
        `<td class="num">${R.agents.filter((a) => a.groupId === g).length}</td></tr>`;
    }
    html += `</table><div style="margin-top:6px;color:var(--dim)">symbols</div>
      <div><span class="swatch round" style="background:${HALO}"></span>light halo: every agent, drawn at least ${2 * AGENT_MIN_R} px wide</div>
      <div><span class="swatch round" style="background:${FROZEN}"></span>light blue halo: agent frozen</div>
      <div>dark notch: the side an agent faces</div>
      <div>white pie in a building: converting; dark disc with an arc: cooling down</div>
      <div><span class="swatch round" style="background:#ffe066"></span>badge: output waiting in a building</div>
      <div>(a building's state shows from ${DETAIL_SCALE} px per cell; zoom in)</div>
      <div>arrow: a move, get (into the agent) or put (out of it); red cross: the action failed</div>
      <div>red 3x3 cells: an attack's reach, cross on the target hit</div>
      <div>dashed box: the selected agent's observation window</div>
      <div>white ring: the selected agent; the camera follows it (C)</div>
      <div style="margin-top:6px;color:var(--dim)">trace colours</div><table>`;
    for (const name of R.actionNames) html += `<tr><td><span class="swatch" style="background:${actionColor(name)}"></span>${esc(name)}</td></tr>`;
    html += `<tr><td><span class="swatch" style="background:#777"></span>darker: failed; yellow top line: reward</td></tr></table>`;
    $('legend').innerHTML = html;
  }

  // ------------------------------------------------------------------------------------------------------
  // Input
  function cellAt(clientX, clientY) {
    const rect = mapCanvas.getBoundingClientRect();
    return [Math.floor((clientX - rect.left - view.ox) / view.s), Math.floor((clientY - rect.top - view.oy) / view.s)];
  }
  function pick(x, y) {
    const step = state.step;
    const a = agentAt(x, y, step);
    if (a) return { kind: 'agent', id: a.id, agentId: a.agentId };
    for (const o of R.converters) if (o.x === x && o.y === y) return { kind: 'converter', id: o.id };
    for (const o of R.movers) if (o.xs[step] === x && o.ys[step] === y) return { kind: 'static', id: o.id };
    for (const o of R.statics) if (o.x === x && o.y === y) return { kind: 'static', id: o.id };
    return null;
  }

  // The tooltip describes what is under the mouse at the step shown: render() calls this on every frame, so
  // it follows playback and the follow camera without the mouse moving.
  let hoverAt = null; // the mouse's client position over the map, or null
  function updateHover() {
    const hover = $('hover');
    const [x, y] = hoverAt ? cellAt(hoverAt.x, hoverAt.y) : [-1, -1];
    const p = x >= 0 && y >= 0 && x < R.W && y < R.H ? pick(x, y) : null;
    if (!p) { hover.hidden = true; M.hoverText = null; return; }
    const step = state.step;
    let text;
    if (p.kind === 'agent') {
      const a = R.agents[p.agentId];
      text = `agent ${a.agentId} · step ${step + 1}: reward ${fmt(a.total[step])}, ${actionText(a, step)} ` +
        `${a.success[step] ? 'succeeded' : 'failed'}${a.frozen[step] ? ', frozen' : ''}`;
    } else {
      const o = R.objects.find((q) => q.id === p.id);
      text = o.kind === 'converter'
        ? `${o.typeName} (${x}, ${y}) · step ${step + 1}: ${converterState(o, step)}, holds ${pairsText(o.inventory[step])}`
        : `${o.typeName} (${x}, ${y})`;
    }
    if (hover.textContent !== text) hover.textContent = text;
    const rect = mapCanvas.getBoundingClientRect();
    hover.style.left = `${hoverAt.x - rect.left + 14}px`;
    hover.style.top = `${hoverAt.y - rect.top + 10}px`;
    hover.hidden = false;
    M.hoverText = text;
  }

  function installInput() {
    let drag = null;
    mapCanvas.addEventListener('mousedown', (e) => {
      if (e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, ox: view.ox, oy: view.oy, moved: false };
      mapCanvas.focus();
    });
    window.addEventListener('mousemove', (e) => {
      if (drag) {
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        if (drag.moved) {
          if (state.follow && selectedAgent()) setFollow(false); // the user takes the camera
          mapCanvas.classList.add('dragging');
          view.ox = drag.ox + dx;
          view.oy = drag.oy + dy;
          dirty = true;
        }
      }
    });
    window.addEventListener('mouseup', (e) => {
      if (!drag) return;
      const wasDrag = drag.moved;
      drag = null;
      mapCanvas.classList.remove('dragging');
      if (!wasDrag && e.target === mapCanvas) {
        const [x, y] = cellAt(e.clientX, e.clientY);
        select(pick(x, y));
      }
    });
    mapCanvas.addEventListener('mousemove', (e) => {
      hoverAt = drag && drag.moved ? null : { x: e.clientX, y: e.clientY };
      updateHover();
    });
    mapCanvas.addEventListener('mouseleave', () => { hoverAt = null; updateHover(); });
    mapCanvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      const rect = mapCanvas.getBoundingClientRect();
      zoomAround(Math.pow(1.0015, -e.deltaY), e.clientX - rect.left, e.clientY - rect.top);
    }, { passive: false });

    let miniDrag = false;
    const miniMove = (e) => {
      if (state.follow && selectedAgent()) setFollow(false); // the user takes the camera
      const rect = mini.getBoundingClientRect();
      centerOn((e.clientX - rect.left) / miniScale - 0.5, (e.clientY - rect.top) / miniScale - 0.5);
    };
    mini.addEventListener('mousedown', (e) => { miniDrag = true; miniMove(e); e.stopPropagation(); });
    window.addEventListener('mousemove', (e) => { if (miniDrag) miniMove(e); });
    window.addEventListener('mouseup', () => { miniDrag = false; });

    trace.addEventListener('click', (e) => {
      const hit = traceHit(e);
      if (!hit) return;
      setPlaying(false);
      setStep(hit.step);
      select({ kind: 'agent', id: hit.agent.id, agentId: hit.agent.agentId });
    });
    trace.addEventListener('mousemove', (e) => {
      const hit = traceHit(e);
      const a = hit && hit.agent;
      $('trace-status').textContent = a ? `agent ${a.agentId}, step ${hit.step + 1}: ${actionText(a, hit.step)} ` +
        `${a.success[hit.step] ? 'succeeded' : 'failed'}, reward ${fmt(a.reward[hit.step])}` +
        `${a.frozen[hit.step] ? ', frozen' : ''}` : '';
    });

    $('scrubber').addEventListener('input', (e) => { setStep(Number(e.target.value)); });
    $('btn-play').addEventListener('click', () => setPlaying(!state.playing));
    $('btn-first').addEventListener('click', () => { setPlaying(false); setStep(0); });
    $('btn-last').addEventListener('click', () => { setPlaying(false); setStep(R.n - 1); });
    $('btn-back').addEventListener('click', () => { setPlaying(false); setStep(state.step - 1); });
    $('btn-fwd').addEventListener('click', () => { setPlaying(false); setStep(state.step + 1); });
    $('btn-fit').addEventListener('click', fit);
    $('speed').addEventListener('change', (e) => setSpeed(Number(e.target.value)));
    $('opt-vision').addEventListener('change', (e) => { state.showVision = e.target.checked; dirty = true; });
    $('opt-actions').addEventListener('change', (e) => { state.allActions = e.target.checked; dirty = true; });
    $('opt-grid').addEventListener('change', (e) => { state.grid = e.target.checked; dirty = true; });
    $('opt-follow').addEventListener('change', (e) => setFollow(e.target.checked));
    $('agent-table').addEventListener('click', (e) => {
      const th = e.target.closest('th');
      if (th) {
        state.sort = th.dataset.key === state.sort.key ? { key: th.dataset.key, dir: -state.sort.dir } : { key: th.dataset.key, dir: -1 };
        panelsStep = -1;
        dirty = true;
        return;
      }
      const tr = e.target.closest('tr');
      if (tr && tr.dataset.agent !== undefined) {
        selectAgent(Number(tr.dataset.agent));
        const a = selectedAgent();
        if (a) centerOn(a.xs[state.step], a.ys[state.step]);
      }
    });

    document.addEventListener('keydown', (e) => {
      if (e.target && (e.target.tagName === 'SELECT' || (e.target.tagName === 'INPUT' && e.target.type !== 'checkbox'))) {
        if (e.target.id !== 'scrubber' || (e.key !== ' ' && e.key !== 'Escape')) return;
      }
      const big = e.shiftKey ? 10 : 1;
      const k = e.key;
      let handled = true;
      if (k === ' ') setPlaying(!state.playing);
      else if (k === 'ArrowRight') { setPlaying(false); setStep(state.step + big); }
      else if (k === 'ArrowLeft') { setPlaying(false); setStep(state.step - big); }
      else if (k === 'Home') { setPlaying(false); setStep(0); }
      else if (k === 'End') { setPlaying(false); setStep(R.n - 1); }
      else if (k === ']') setSpeed(SPEEDS[Math.min(SPEEDS.length - 1, SPEEDS.indexOf(state.speed) + 1)]);
      else if (k === '[') setSpeed(SPEEDS[Math.max(0, SPEEDS.indexOf(state.speed) - 1)]);
      else if (k === '+' || k === '=') { const [cw, ch] = mapSize(); zoomAround(1.25, cw / 2, ch / 2); }
      else if (k === '-' || k === '_') { const [cw, ch] = mapSize(); zoomAround(0.8, cw / 2, ch / 2); }
      else if (k === 'c' || k === 'C') setFollow(!state.follow);
      else if (k === 'f' || k === 'F' || k === '0') fit();
      else if (k === 'v' || k === 'V') { state.showVision = !state.showVision; $('opt-vision').checked = state.showVision; dirty = true; }
      else if (k === 'a' || k === 'A') { state.allActions = !state.allActions; $('opt-actions').checked = state.allActions; dirty = true; }
      else if (k === 'g' || k === 'G') { state.grid = !state.grid; $('opt-grid').checked = state.grid; dirty = true; }
      else if (k === 'n' || k === 'N' || k === 'p' || k === 'P') {
        const cur = selectedAgent();
        const d = k === 'n' || k === 'N' ? 1 : -1;
        const next = cur ? (cur.agentId + d + R.agents.length) % R.agents.length : 0;
        selectAgent(next);
      } else if (k === 'Escape') select(null);
      else handled = false;
      if (handled) e.preventDefault();
    });
    window.addEventListener('resize', () => { resize(); });
  }

  // ------------------------------------------------------------------------------------------------------
  // Playback loop: advances `speed` steps per second and redraws only when something changed.
  let lastT = null;
  let carry = 0;
  const frameTimes = [];
  function loop(t) {
    if (state.playing && lastT !== null) {
      carry += ((t - lastT) / 1000) * state.speed;
      const adv = Math.floor(carry);
      if (adv > 0) {
        carry -= adv;
        setStep(state.step + adv);
        if (state.step >= R.n - 1) setPlaying(false);
      }
    } else {
      carry = 0;
    }
    lastT = t;
    if (dirty) {
      render();
      frameTimes.push(t);
      while (frameTimes.length && frameTimes[0] < t - 1000) frameTimes.shift();
      M.fps = frameTimes.length;
    }
    requestAnimationFrame(loop);
  }

  // ------------------------------------------------------------------------------------------------------
  // What scripts and tests use
  Object.assign(M, {
    setStep: (k) => { setStep(k); },
    play: () => setPlaying(true),
    pause: () => setPlaying(false),
    setSpeed: (v) => setSpeed(v),
    selectAgent: (id) => selectAgent(id),
    select: (sel) => select(sel),
    fit: () => fit(),
    centerOn: (x, y) => centerOn(x, y),
    setFollow: (on) => setFollow(!!on),
    formatRate: (ok, count) => rate(ok, count),
    // Client (page) coordinates of the centre of cell (x, y).
    cellToClient: (x, y) => {
      const rect = mapCanvas.getBoundingClientRect();
      return [rect.left + view.ox + (x + 0.5) * view.s, rect.top + view.oy + (y + 0.5) * view.s];
    },
    agentPositions: (step) => R.agents.map((a) => ({ agent_id: a.agentId, x: a.xs[step], y: a.ys[step] })),
    groupColor: (g) => rgb(groupColor(g)),
    view,
  });

  async function boot() {
    const err = JSON.parse($('replay-error').textContent || 'null');
    if (err) { showError(err); return; }
    const b64 = $('replay-data').textContent.trim();
    if (!b64) { showError('This page holds no replay data.'); return; }
    const text = await inflate(base64ToBytes(b64));
    let data;
    try {
      data = JSON.parse(text);
    } catch (e) {
      throw new Error('replay: the decompressed content is not valid JSON (' + e.message + ')');
    }
    R = buildReplay(data);
    M.replay = R;
    $('env-name').textContent = R.envName;
    $('title').textContent = R.fileName;
    $('episode-label').textContent = episodeText(false);
    $('scrubber').max = String(R.n - 1);
    $('speed').innerHTML = SPEEDS.map((v) => `<option value="${v}">${v} steps/s</option>`).join('');
    setSpeed(state.speed);
    buildStaticLayer();
    setupMinimap();
    buildTraceLayer();
    buildAgentTable();
    buildSummary();
    buildLegend();
    installInput();
    resize();
    fit();
    render();
    M.ready = true;
    M.readyAt = performance.now();
    requestAnimationFrame(loop);
  }
  boot().catch((e) => showError((e && e.message) || String(e)));
})();
