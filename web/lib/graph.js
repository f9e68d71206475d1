// Reading the graph around a DeepGen node: what feeds an input (image sizes, the selected model, linked text).

export const REFERENCE_INPUTS = ["image1", "image2", "image3", "image4"];
const LOADER_WIDGETS = { DeepGenVLMLoader: "vlm_name", DeepGenCheckpointLoader: "ckpt_name" };

export function isDeepGenNode(nodeData) {
  const category = nodeData?.category ?? "";
  return category === "DeepGen" || category.startsWith("DeepGen/");
}

export function widget(node, name) {
  return node?.widgets?.find((w) => w.name === name);
}

/** The node (and output slot) an input of `node` is linked from, following legacy Reroute nodes. */
export function source(node, inputName) {
  let current = node;
  let input = current?.inputs?.find((i) => i.name === inputName);
  for (let hops = 0; hops < 8; hops++) {
    if (!input || input.link == null || !current.graph) return null;
    const link = current.graph.getLink?.(input.link) ?? current.graph.links?.[input.link];
    if (!link) return null;
    const origin = current.graph.getNodeById(link.origin_id);
    if (!origin) return null;
    if (origin.type !== "Reroute") return { node: origin, slot: link.origin_slot };
    current = origin;
    input = origin.inputs?.[0];
  }
  return null;
}

export function isConnected(node, inputName) {
  const input = node?.inputs?.find((i) => i.name === inputName);
  return input != null && input.link != null;
}

/** {width, height} of the image an input receives, when the graph tells: a Load Image preview, or a
 * source node with positive width/height widgets (Empty Image, Image Scale, crops...). Else null. */
export function imageSize(node, inputName) {
  const from = source(node, inputName);
  if (!from) return null;
  const img = from.node.imgs?.[0];
  if (img?.naturalWidth > 0 && img?.naturalHeight > 0) return { width: img.naturalWidth, height: img.naturalHeight };
  const w = widget(from.node, "width")?.value;
  const h = widget(from.node, "height")?.value;
  if (Number.isInteger(w) && Number.isInteger(h) && w > 0 && h > 0) return { width: w, height: h };
  return null;
}

/** The model whose tokenizer counts tokens: the loader feeding the `vlm` input, by its widget values. */
export function selectedModel(node) {
  const from = source(node, "vlm");
  const key = LOADER_WIDGETS[from?.node?.type];
  if (!key) return null;
  const name = widget(from.node, key)?.value;
  if (typeof name !== "string" || !name) return null;
  const model = { loader: from.node.type, name };
  const base = widget(from.node, "vlm_base")?.value;
  if (typeof base === "string") model.vlm_base = base;
  return model;
}

/** A text widget's value; when its input socket is linked, the source node's first text widget. */
export function textValue(node, name) {
  if (!isConnected(node, name)) return { text: String(widget(node, name)?.value ?? ""), known: true };
  const from = source(node, name);
  const text = from?.node?.widgets?.find((w) => typeof w.value === "string")?.value;
  return typeof text === "string" ? { text, known: true } : { text: "", known: false };
}
