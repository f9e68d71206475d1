// Output-size presets for DeepGenEditEncode's width/height (used when several references are given):
// sizes of ~512x512 area in sides that are multiples of 32 (from GET /deepgen/size_presets), and
// "match image1" = the resized size of the first reference. The widget is not saved with the workflow.

import { widget } from "./graph.js";

export const CUSTOM = "custom";
export const MATCH_IMAGE1 = "match image1";

export function presetLabel(p) {
  return `${p.name} · ${p.width}×${p.height}`;
}

/** Label of the preset the current width/height equal, else "custom". */
export function currentLabel(node, presets) {
  const w = widget(node, "width")?.value;
  const h = widget(node, "height")?.value;
  const hit = presets.find((p) => p.width === w && p.height === h);
  return hit ? presetLabel(hit) : CUSTOM;
}

function setSize(node, width, height) {
  for (const [name, value] of [["width", width], ["height", height]]) {
    const w = widget(node, name);
    if (!w) continue;
    w.value = value;
    w.callback?.(value, globalThis.app?.canvas, node);
  }
  node.setDirtyCanvas?.(true, true);
}

/** Add the "size preset" combo; `image1Size(node)` gives the resized image1 size when known. */
export function addSizePresets(node, presets, image1Size, onChange) {
  if (!presets?.length || widget(node, "size preset")) return null;
  const values = [CUSTOM, ...presets.map(presetLabel), MATCH_IMAGE1];
  const combo = node.addWidget(
    "combo",
    "size preset",
    currentLabel(node, presets),
    (value) => {
      const preset = presets.find((p) => presetLabel(p) === value);
      const size = preset ?? (value === MATCH_IMAGE1 ? image1Size(node) : null);
      if (size) setSize(node, size.width, size.height);
      combo.value = currentLabel(node, presets);
      onChange?.(node);
    },
    { values, serialize: false },
  );
  combo.serialize = false; // neither in the saved workflow nor in the API prompt
  combo.tooltip = "Output size for several references (about 512×512 pixels, sides multiples of 32); " +
    "'match image1' copies the first reference's resized size. With one reference the output always " +
    "takes that reference's size.";
  return combo;
}

/** Width/height (and the preset) only matter with several references: grey them out otherwise. */
export function syncSizeWidgets(node, references, presets) {
  const ignored = references === 1;
  for (const name of ["width", "height", "size preset"]) {
    const w = widget(node, name);
    if (w) w.disabled = ignored;
  }
  const combo = widget(node, "size preset");
  if (combo && presets?.length) combo.value = currentLabel(node, presets);
}
