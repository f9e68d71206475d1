// The template browser's cards of this pack. ComfyUI serves a pack's templates as bare file names, and every
// frontend captions the card with it: our files are named by their human title ("DeepGen 1 - Text to
// image"). Frontend 1.32 (ComfyUI 0.3.75) also prints the file name again as the card's description; this
// puts the pack's own description there (locales/en/main.json, which ComfyUI serves in /i18n). Frontends
// that show no description (1.48, ComfyUI 0.33) have no such line, and nothing changes: the thumbnail
// carries the description there.

const LOCALE_KEY = "ComfyUI-DeepGen"; // the pack's key in its locale file, whatever its folder is called
const CARD = '[data-testid^="template-workflow-"]';

async function loadDescriptions(fetchApi, locale) {
  try {
    const messages = await (await fetchApi("/i18n")).json();
    const pick = (lang) => messages?.[lang]?.templateWorkflows?.templateDescription?.[LOCALE_KEY];
    return pick(locale) ?? pick("en") ?? {};
  } catch (e) {
    console.warn("DeepGen: template descriptions unavailable", e);
    return {};
  }
}

function describe(descriptions) {
  for (const card of document.querySelectorAll(CARD)) {
    const text = descriptions[card.dataset.testid.slice("template-workflow-".length)];
    const line = card.querySelector("p");
    if (text && line && line.textContent !== text) {
      line.textContent = text;
      line.title = text;
    }
  }
}

/** Watch the page for our cards (the dialog renders them lazily) and describe each as it appears. */
export function describeTemplateCards(fetchApi, locale = "en") {
  let descriptions = null;
  let scheduled = false;
  const scan = async () => {
    scheduled = false;
    if (!document.querySelector(CARD)) return;
    descriptions ??= await loadDescriptions(fetchApi, locale);
    describe(descriptions);
  };
  new MutationObserver(() => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(scan);
    }
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
}
