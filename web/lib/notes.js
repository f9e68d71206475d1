// Run-time notes of DeepGen nodes that have no prompt panel (e.g. the sampler's "cfg is 100, far above the
// 3.5-7.5 the authors use ..."): the node's UI output deepgen_warnings, shown in amber below its widgets
// until a run without notes. A note is advice, not an error: the run went through.

const NAME = "deepgen_notes";
const LINE = 15; // px per line of the note text (font 11px / 1.35)

export const NOTES_STYLE = `
.deepgen-notes { font: 11px/1.35 sans-serif; color: #ffb74d; white-space: pre-wrap; overflow: hidden;
  box-sizing: border-box; padding: 2px 6px; height: 100%; }
`;

/** Show `warnings` (list of strings) on `node`. The note takes its room from the node's spare height (e.g. the
 * sampler's preview area); the node grows only by what it lacks, and gets that back when the notes go. */
export function showNotes(node, warnings) {
  let w = node.widgets?.find((x) => x.name === NAME);
  if (!w && !warnings.length) return;
  if (!w) {
    const element = document.createElement("div");
    element.className = "deepgen-notes";
    w = node.addDOMWidget(NAME, NAME, element, {
      serialize: false,
      hideOnZoom: false,
      getValue: () => "",
      setValue: () => {},
      getMinHeight: () => w.__deepgenHeight ?? 0,
      getMaxHeight: () => w.__deepgenHeight ?? 0, // the rest stays free (the sampler's live preview)
    });
    w.serialize = false; // not in widgets_values: saved workflows keep their positional values
  }
  const text = warnings.map((x) => `⚠ ${x}`).join("\n");
  w.element.textContent = text;
  w.element.title = text;
  const width = Math.max(node.size[0] - 20, 100);
  const perLine = Math.max(20, Math.floor(width / 6)); // ~6 px per character at 11px
  const lines = warnings.reduce((n, x) => n + Math.ceil((x.length + 2) / perLine), 0);
  const own = node.size[1] - (w.__deepgenGrown ?? 0); // the node's height without what the notes added
  w.__deepgenHeight = lines ? lines * LINE + 6 : 0;
  w.__deepgenGrown = Math.max(0, node.computeSize()[1] - own);
  node.setSize([node.size[0], own + w.__deepgenGrown]);
  node.setDirtyCanvas?.(true, true);
}
