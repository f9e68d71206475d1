"""DeepGen 1.0 inference constants (docs/inference.md#components, #inference, #checkpoints, #defaults).

Data only: every number and string here is the released model's, as documented there, never tuned.
"""

# docs/inference.md#prompts, #pitfall-4: prompt templates. No system prompt and no chat template.
INSTRUCTION_TEMPLATE = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
GENERATION_TEMPLATE = "Generate an image: {input}"  # text-to-image only (docs/inference.md#pitfall-5)
IMAGE_BLOCK = "<|vision_start|>{pads}<|vision_end|>"
IMAGE_PAD_TOKEN = "<|image_pad|>"
PAD_TOKEN = "<|endoftext|>"

# docs/inference.md#defaults: the authors' evaluation defaults.
DEFAULT_STEPS = 50
DEFAULT_CFG = 4.0
DEFAULT_SIZE = 512
T2I_NEGATIVE = ""
EDIT_NEGATIVE = (
    "blurry, low quality, low resolution, distorted, deformed, broken content, missing parts, "
    "damaged details, artifacts, glitch, noise, pixelated, grainy, compression artifacts, "
    "bad composition, wrong proportion, incomplete editing, unfinished, unedited areas."
)

# docs/inference.md#think-tokens, #layer-selection: think tokens and the stacked-channel layer selection.
NUM_THINK_TOKENS = 128
LAYER_STRIDE = 6  # selected = range(num_layers - 1, 0, -6) -> 35, 29, 23, 17, 11, 5 at depth 36

# docs/inference.md#vae: SD3 VAE latent normalisation.
VAE_SCALING_FACTOR = 1.5305
VAE_SHIFT_FACTOR = 0.0609
VAE_DOWNSCALE = 8
LATENT_CHANNELS = 16

# docs/inference.md#scheduler: scheduler fallback when no scheduler_config.json is available (native model.pt path).
DEFAULT_SHIFT = 3.0
NUM_TRAIN_TIMESTEPS = 1000

# docs/inference.md#reference-images: reference images are resized to multiples of 32; the ViT sees them at 28/32 scale.
REFERENCE_UNIT = 32
VIT_SCALE = 28 / 32
# the ViT's patches (14 px, 2 frames), merged 2x2 into one LLM token (docs/inference.md#vlm).
VIT_PATCH = 14
VIT_MERGE = 2
VIT_TEMPORAL = 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# docs/inference.md#output-size, #pitfall-21: output sides are multiples of 16 (VAE 8 x patch 2).
SIZE_MULTIPLE = 16

# Limits of what the nodes (and the Python API) accept: reference images per edit, the longest output /
# reference side, sampling steps.
MAX_REFERENCES = 4
MAX_SIDE = 4096
MAX_STEPS = 1000

# docs/inference.md#vlm-lora: VLM LoRA scale alpha / r = 128 / 64.
LORA_SCALE = 2.0


def selected_layers(num_hidden_layers: int) -> tuple[int, ...]:
    """Hidden-state indices fed to the SCB, deepest first (docs/inference.md#layer-selection): 35, 29, 23, 17, 11, 5 at 36."""
    return tuple(range(num_hidden_layers - 1, 0, -LAYER_STRIDE))
