// Visual identity of the DeepGen node family: one title/body colour pair and a "DeepGen" badge.

export const COLORS = { color: "#4b2d7f", bgcolor: "#2b2540" };
export const BADGE = { text: "DeepGen", fgColor: "#ffffff", bgColor: "#7c4dff" };

/** Colour a new node (a colour saved in a workflow is applied later by configure and wins) and badge it. */
export function applyIdentity(node, { colors = true } = {}) {
  if (colors && !node.color && !node.bgcolor) {
    node.color = COLORS.color;
    node.bgcolor = COLORS.bgcolor;
  }
  const Badge = globalThis.LGraphBadge;
  if (Badge && Array.isArray(node.badges) && !node.badges.some((b) => b?.text === BADGE.text)) {
    node.badges.push(new Badge({ ...BADGE }));
  }
}
