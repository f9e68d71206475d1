// DeepGenEditEncode's optional reference inputs (image2..image4) grow as you connect them: the node shows
// every reference up to the highest connected one plus one empty slot. Only unconnected slots after the
// highest connected reference are ever removed (always at the end of the input list), so the slot
// indices of existing links never change and saved workflows load with their links intact.

import { REFERENCE_INPUTS } from "./graph.js";

const OPTIONAL_SHAPE = 7; // RenderShape.HollowCircle, as the frontend draws optional inputs
const FIRST_OPTIONAL = 2;

function referenceIndex(name) {
  const i = REFERENCE_INPUTS.indexOf(name);
  return i < 0 ? 0 : i + 1;
}

/** How many reference inputs should be visible: highest connected + 1, between 2 and 4. */
export function wantedReferences(node) {
  let highest = 0;
  for (const input of node.inputs ?? []) {
    if (input.link != null) highest = Math.max(highest, referenceIndex(input.name));
  }
  return Math.min(REFERENCE_INPUTS.length, Math.max(FIRST_OPTIONAL, highest + 1));
}

export function syncReferenceInputs(node) {
  if (!node.inputs || node.__deepgenConfiguring) return false;
  const want = wantedReferences(node);
  let changed = false;
  for (let slot = node.inputs.length - 1; slot >= 0; slot--) {
    const input = node.inputs[slot];
    const index = referenceIndex(input.name);
    if (index > want && input.link == null) {
      node.removeInput(slot);
      changed = true;
    }
  }
  for (let index = FIRST_OPTIONAL; index <= want; index++) {
    const name = REFERENCE_INPUTS[index - 1];
    if (!node.inputs.some((i) => i.name === name)) {
      node.addInput(name, "IMAGE", { shape: OPTIONAL_SHAPE, localized_name: name });
      changed = true;
    }
  }
  if (changed) node.setDirtyCanvas?.(true, true);
  return changed;
}

/** Wrap the node type: trim on creation, re-sync after configure (loading a workflow) and on (dis)connection. */
export function installGrowingReferences(nodeType, onChange) {
  const chain = (name, after, before) => {
    const original = nodeType.prototype[name];
    nodeType.prototype[name] = function (...args) {
      before?.call(this, ...args);
      try {
        return original?.apply(this, args);
      } finally {
        after.call(this, ...args);
      }
    };
  };
  chain("onNodeCreated", function () {
    syncReferenceInputs(this);
  });
  chain(
    "configure",
    function () {
      this.__deepgenConfiguring = false;
      syncReferenceInputs(this);
      onChange?.(this);
    },
    function () {
      this.__deepgenConfiguring = true;
    },
  );
  chain("onConnectionsChange", function (type, slot) {
    if (type !== 1 /* LiteGraph.INPUT */) return;
    // deferred: replacing a link disconnects then reconnects the same slot in one call, which must
    // not see that slot removed in between
    if (referenceIndex(this.inputs?.[slot]?.name ?? "") && !this.__deepgenSyncQueued) {
      this.__deepgenSyncQueued = true;
      queueMicrotask(() => {
        this.__deepgenSyncQueued = false;
        syncReferenceInputs(this);
        onChange?.(this);
      });
    }
    onChange?.(this);
  });
}
