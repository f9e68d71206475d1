// Visual identity of the DeepGen node family: one title/body colour pair, and a badge in the family
// colour naming the node's part of the pipeline (the frontend's own source badge already names the pack).

export const COLORS = { color: "#4b2d7f", bgcolor: "#2b2540" };
export const BADGE_COLORS = { fgColor: "#ffffff", bgColor: "#7c4dff" };
const ROLES = {
  DeepGenCheckpointLoader: "all-in-one",
  DeepGenVLMLoader: "VLM",
  DeepGenSCBLoader: "SCB",
  DeepGenDiTLoader: "DiT",
  DeepGenVAELoader: "VAE",
  DeepGenTextEncode: "T2I",
  DeepGenEditEncode: "edit",
  DeepGenSampler: "sampler",
  DeepGenScheduler: "sigmas",
};

export function roleOf(type) {
  return ROLES[type] ?? "DeepGen";
}

/** Colour a new node (a colour saved in a workflow is applied later by configure and wins) and badge it. */
export function applyIdentity(node, { colors = true } = {}) {
  if (colors && !node.color && !node.bgcolor) {
    node.color = COLORS.color;
    node.bgcolor = COLORS.bgcolor;
  }
  const Badge = globalThis.LGraphBadge;
  if (Badge && Array.isArray(node.badges) && !node.__deepgenBadge) {
    node.__deepgenBadge = new Badge({ text: roleOf(node.comfyClass ?? node.type), ...BADGE_COLORS });
    node.badges.push(node.__deepgenBadge);
  }
}
