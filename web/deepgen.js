// ComfyUI-DeepGen web extension: node identity, live VLM prompt preview, growing reference inputs,
// output-size presets, run notes, the node to fix after a size error, and template card descriptions.
// Written for ComfyUI frontend 1.32.x (classic canvas); see docs/web-extension.md.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { REFERENCE_INPUTS, isConnected, isDeepGenNode } from "./lib/graph.js";
import { applyIdentity } from "./lib/identity.js";
import { NOTES_STYLE, showNotes } from "./lib/notes.js";
import { STYLE, buildRequest, createPreviewElement, render } from "./lib/preview.js";
import { installGrowingReferences } from "./lib/references.js";
import { describeTemplateCards } from "./lib/templates.js";
import { addSizePresets, syncSizeWidgets } from "./lib/sizes.js";

const VERSION = "1.0.0";
const ENCODERS = new Set(["DeepGenTextEncode", "DeepGenEditEncode"]);
const SETTING_COLORS = "DeepGen.Appearance.NodeColors";
const SETTING_PREVIEW = "DeepGen.PromptPreview.Enabled";
const DEBOUNCE_MS = 250;
const POLL_MS = 700; // image previews load asynchronously; re-check the inputs this often
const RETRY_MS = 3000; // the selected model's files were missing: ask again this often (they may appear)
// The panel's minimum height is small, so a saved node keeps its saved size (a node that grows on load
// covers the node below it); a NEW node gets a roomier panel once, at creation.
const PANEL_MIN = 64;
const PANEL_NEW = { DeepGenTextEncode: 150, DeepGenEditEncode: 240 };
// The frontend shares a node's spare height equally among its DOM widgets; the prompt boxes stop growing at
// these heights (they scroll beyond), so the rest goes to the panel, which then shows the prompt unscrolled.
const TEXT_MAX = { prompt: 140, negative_prompt: 100 };
let presets = [];

function setting(id, fallback) {
  try {
    return app.extensionManager?.setting?.get(id) ?? fallback;
  } catch {
    return fallback;
  }
}

// ---------------------------------------------------------------- prompt preview

async function fetchPreview(body) {
  try {
    const resp = await api.fetchApi("/deepgen/prompt_preview", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
    return resp.ok ? answer : { error: answer.error ?? `HTTP ${resp.status}` };
  } catch (e) {
    return { error: `server unreachable (${e?.message ?? e})` };
  }
}

/** Re-query the server when the node's inputs changed (debounced); `now` skips the debounce. */
function refresh(node, now = false) {
  const state = node.__deepgen;
  if (!state?.element || !node.graph) return;
  const { body, names, notes } = buildRequest(node);
  const signature = JSON.stringify(body);
  if (node.type === "DeepGenEditEncode") {
    const count = REFERENCE_INPUTS.filter((n) => isConnected(node, n)).length;
    syncSizeWidgets(node, count, presets);
  }
  const retry = state.answer?.retry && Date.now() - state.fetchedAt > RETRY_MS;
  if (signature === state.signature && !now && !retry) return;
  if (signature !== state.signature) state.runWarnings = []; // they were about the text of the last run
  state.signature = signature;
  state.fetchedAt = Date.now();
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    const answer = await fetchPreview(body);
    if (state.signature !== signature) return; // a newer request is under way
    Object.assign(state, { answer, names, notes, fetchedAt: Date.now() });
    render(state.element, answer, names, notes, state.runWarnings);
    state.element.dataset.signature = signature;
    node.setDirtyCanvas?.(true, false);
  }, now ? 0 : DEBOUNCE_MS);
}

function addPreview(node) {
  const element = createPreviewElement();
  const w = node.addDOMWidget("deepgen_prompt_preview", "deepgen_preview", element, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => PANEL_MIN,
  });
  w.serialize = false; // not in widgets_values: saved workflows keep their positional values
  node.__deepgen = { element, signature: null, timer: null, answer: null, fetchedAt: 0, runWarnings: [] };
  for (const name of ["prompt", "negative_prompt", "max_side", "width", "height"]) {
    const target = node.widgets?.find((x) => x.name === name);
    if (!target) continue;
    if (TEXT_MAX[name] && target.options && !target.options.getMaxHeight) target.options.getMaxHeight = () => TEXT_MAX[name];
    const original = target.callback;
    target.callback = function (...args) {
      const r = original?.apply(this, args);
      refresh(node);
      return r;
    };
  }
  const size = node.computeSize?.(); // a loaded workflow then sets its saved size, which this minimum fits
  if (size) node.setSize([Math.max(node.size[0], 380), Math.max(node.size[1], size[1] + PANEL_NEW[node.type] - PANEL_MIN)]);
  addTooltips(node);
}

/** The prompt boxes are DOM textareas, which the canvas's tooltips do not cover: give them their input's
 * tooltip as a title. (Output slots show the node definition's output tooltips by themselves.) */
function addTooltips(node) {
  const tips = node.constructor?.nodeData?.input?.required ?? {};
  for (const w of node.widgets ?? []) {
    const el = w.inputEl ?? w.element;
    const tip = tips[w.name]?.[1]?.tooltip;
    if (el && tip && !el.title) el.title = tip;
  }
}

/** A DeepGen node's run-time notes (e.g. a prompt longer than DeepGen was trained on, an extreme cfg): its UI
 * output, sent with the "executed" event (and kept in /history); the encode nodes show them in their panel. */
function onExecuted({ detail }) {
  const warnings = detail?.output?.deepgen_warnings;
  if (!Array.isArray(warnings)) return;
  const node = app.graph?.getNodeById?.(Number(detail.display_node ?? detail.node));
  const state = node?.__deepgen;
  if (node && !state) return showNotes(node, warnings.map(String)); // e.g. the sampler's cfg note
  if (!state) return;
  state.runWarnings = warnings.map(String);
  if (state.answer) render(state.element, state.answer, state.names, state.notes, state.runWarnings);
  node.setDirtyCanvas?.(true, false);
}

// The node a DeepGen size error asks the user to change (the sampler names it: nodes/sampling.py) gets
// litegraph's error outline until the next run starts; the frontend itself outlines only the sampler.
let outlined = null;

function outlineFixNode({ detail }) {
  const node = app.graph?.getNodeById?.(detail?.node);
  if (!node || node.has_errors) return;
  clearOutline();
  node.has_errors = true;
  outlined = node;
  app.graph.setDirtyCanvas(true, true);
}

function clearOutline() {
  if (!outlined) return;
  outlined.has_errors = false;
  outlined = null;
  app.graph?.setDirtyCanvas(true, true);
}

function image1Size(node) {
  const ref = node.__deepgen?.answer?.references?.[0];
  return ref ? { width: ref.resized[0], height: ref.resized[1] } : null;
}

function pollAll() {
  for (const node of app.canvas?.graph?.nodes ?? app.graph?.nodes ?? []) {
    if (node.__deepgen) refresh(node);
  }
}

// ---------------------------------------------------------------- the extension

app.registerExtension({
  name: "DeepGen.WebExtension",
  settings: [
    {
      id: SETTING_COLORS,
      category: ["DeepGen", "Appearance", "Node colours"],
      name: "Colour new DeepGen nodes (purple) and show a DeepGen badge",
      type: "boolean",
      defaultValue: true,
    },
    {
      id: SETTING_PREVIEW,
      category: ["DeepGen", "Prompt preview", "Enabled"],
      name: "Show the exact VLM prompt (and token count) on DeepGen encode nodes (applies to new nodes)",
      type: "boolean",
      defaultValue: true,
    },
  ],

  async init() {
    const style = document.createElement("style");
    style.id = "deepgen-web-style";
    style.textContent = STYLE + NOTES_STYLE;
    document.head.append(style);
    try {
      const resp = await api.fetchApi("/deepgen/size_presets");
      if (resp.ok) presets = (await resp.json()).presets ?? [];
    } catch (e) {
      console.warn("DeepGen: size presets unavailable", e);
    }
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === "DeepGenEditEncode") installGrowingReferences(nodeType, (node) => refresh(node));
    if (!ENCODERS.has(nodeData?.name)) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = created?.apply(this, arguments);
      if (nodeData.name === "DeepGenEditEncode") addSizePresets(this, presets, image1Size, (n) => refresh(n));
      if (setting(SETTING_PREVIEW, true)) addPreview(this);
      return r;
    };
    const removed = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      clearTimeout(this.__deepgen?.timer);
      return removed?.apply(this, arguments);
    };
  },

  nodeCreated(node) {
    if (isDeepGenNode(node.constructor?.nodeData)) applyIdentity(node, { colors: setting(SETTING_COLORS, true) });
  },

  setup() {
    setInterval(pollAll, POLL_MS);
    describeTemplateCards((path) => api.fetchApi(path), setting("Comfy.Locale", "en"));
    api.addEventListener("executed", onExecuted);
    api.addEventListener("deepgen.fix_node", outlineFixNode);
    api.addEventListener("execution_start", clearOutline);
    window.__deepgenWeb = { version: VERSION, refresh: (node) => refresh(node, true), presets: () => presets };
  },
});
