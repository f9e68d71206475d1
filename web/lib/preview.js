// Live preview of the exact VLM prompt strings a DeepGen encode node will tokenise. The strings (and
// token counts) come from the server (POST /deepgen/prompt_preview, built by deepgen_model.prompts);
// this module only gathers the node's inputs and renders the answer.

import { REFERENCE_INPUTS, imageSize, isConnected, selectedModel, textValue, widget } from "./graph.js";

const PAD = "<|image_pad|>";
const PAD_RUN = /(?:<\|image_pad\|>)+/g;

/** Request body for the node's current state, the reference input names it covers, and notes about
 * what the graph could not tell. */
export function buildRequest(node) {
  const prompt = textValue(node, "prompt");
  const negative = textValue(node, "negative_prompt");
  const body = { prompt: prompt.text, negative_prompt: negative.text, model: selectedModel(node) };
  const notes = [];
  let names = [];
  if (!prompt.known || !negative.known) notes.push("a prompt comes from a linked node whose text is not known here");
  if (node.type === "DeepGenEditEncode") {
    body.mode = "edit";
    const connected = REFERENCE_INPUTS.filter((name) => isConnected(node, name));
    names = connected.length ? connected : ["image1"];
    body.references = names.map((name) => imageSize(node, name));
    for (const key of ["max_side", "width", "height"]) body[key] = widget(node, key)?.value;
  } else {
    body.mode = "t2i";
  }
  return { body, names, notes };
}

/** Runs of image pads shown as one "<|image_pad|>×N" (N = "?" for a reference of unknown size). */
export function compact(text, references) {
  let i = 0;
  return text.replace(PAD_RUN, (run) => {
    const ref = references?.[i++];
    const n = ref ? ref.tokens : references ? "?" : run.length / PAD.length;
    return `${PAD}×${n}`;
  });
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

export function createPreviewElement() {
  const root = el("div", "deepgen-preview");
  const head = el("div", "dg-head");
  head.append(el("span", "dg-title", "VLM prompt"), el("span", "dg-tokens", ""));
  const toggle = el("label", "dg-exact");
  const box = el("input");
  box.type = "checkbox";
  box.className = "dg-exact-box";
  toggle.append(box, document.createTextNode(" exact"));
  toggle.title = "Show every <|image_pad|> token instead of <|image_pad|>×N";
  head.append(toggle);
  // the summary first (it stays visible in a small node), then the strings (scrollable)
  root.append(head, el("div", "dg-warn", ""), el("div", "dg-note", ""), el("div", "dg-refs", ""),
    el("div", "dg-output", ""));
  root.append(el("div", "dg-label", "positive"), el("pre", "dg-pos", "…"));
  root.append(el("div", "dg-label", "negative"), el("pre", "dg-neg", "…"));
  for (const type of ["pointerdown", "mousedown", "wheel"]) root.addEventListener(type, (e) => e.stopPropagation());
  box.addEventListener("change", () => root.__deepgenRender?.());
  return root;
}

function tokenLine(r) {
  if (!r.tokens) return r.tokens_note ?? "";
  const t = r.tokens;
  const more = r.complete ? "" : " + ? image tokens";
  return `positive ${t.positive} · negative ${t.negative} tokens${more} (padded to ${t.padded}) + ${t.think} think`;
}

function referenceLine(r, names) {
  return (r.references ?? [])
    .map((ref, i) => {
      const name = names?.[i] ?? `image${i + 1}`;
      if (!ref) return `${name}: size unknown (shown once loaded, e.g. from a Load Image preview)`;
      return `${name}: ${ref.width}×${ref.height} → ${ref.resized[0]}×${ref.resized[1]} · ${ref.tokens} tokens`;
    })
    .join("\n");
}

function outputLine(r) {
  const o = r.output;
  if (!o) return r.mode === "edit" ? "output: the resized image1 size (once its size is known)" : "";
  if (o.from === "image1") return `output: ${o.width}×${o.height} = resized image1 (width/height ignored with one reference)`;
  return `output: ${o.width}×${o.height} from width/height`;
}

/** Fill the element with a server answer (or an error text) and the last run's warnings. */
export function render(root, answer, names, notes, runWarnings = []) {
  const show = () => {
    const exact = root.querySelector(".dg-exact-box").checked;
    const q = (s) => root.querySelector(s);
    const warnings = [...new Set([...(answer.warnings ?? []), ...runWarnings])];
    q(".dg-warn").textContent = warnings.map((w) => `⚠ ${w}`).join("\n");
    if (answer.error) {
      q(".dg-pos").textContent = q(".dg-neg").textContent = "";
      q(".dg-tokens").textContent = "";
      q(".dg-note").textContent = `preview unavailable: ${answer.error}`;
      root.dataset.state = "error";
      return;
    }
    const refs = answer.mode === "edit" ? answer.references : null;
    q(".dg-pos").textContent = exact ? answer.positive : compact(answer.positive, refs);
    q(".dg-neg").textContent = exact ? answer.negative : compact(answer.negative, refs);
    q(".dg-tokens").textContent = tokenLine(answer);
    q(".dg-refs").textContent = answer.mode === "edit" ? referenceLine(answer, names) : "";
    q(".dg-output").textContent = outputLine(answer);
    q(".dg-note").textContent = notes.join("; ");
    root.dataset.state = answer.complete ? "complete" : "partial";
  };
  root.__deepgenRender = show;
  show();
}

export const STYLE = `
.deepgen-preview { font: 11px/1.35 ui-monospace, SFMono-Regular, Menlo, monospace; color: #ddd;
  background: #1d1830; border: 1px solid #7c4dff66; border-radius: 6px; padding: 4px 6px;
  box-sizing: border-box; overflow: auto; height: 100%; }
.deepgen-preview .dg-head { display: flex; gap: 8px; align-items: center; font-family: sans-serif; }
.deepgen-preview .dg-title { font-weight: 600; color: #b9a3ff; }
.deepgen-preview .dg-tokens { flex: 1; color: #9fd; }
.deepgen-preview .dg-exact { cursor: pointer; color: #aaa; }
.deepgen-preview .dg-label { color: #888; font-family: sans-serif; margin-top: 3px; }
.deepgen-preview pre { margin: 0; white-space: pre-wrap; word-break: break-all; color: #eee;
  background: #0005; padding: 2px 4px; border-radius: 3px; }
.deepgen-preview .dg-refs, .deepgen-preview .dg-output { white-space: pre-wrap; color: #bbb; margin-top: 3px; }
.deepgen-preview .dg-note { color: #f9c66b; }
.deepgen-preview .dg-warn { color: #ffb74d; white-space: pre-wrap; font-family: sans-serif; }
.deepgen-preview .dg-warn:empty { display: none; }
.deepgen-preview[data-state="error"] .dg-note { color: #ff8a80; }
`;
