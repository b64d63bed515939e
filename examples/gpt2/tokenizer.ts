import { decode as bpeDecode, encode as bpeEncode, vocabularySize as bpeVocabularySize } from 'gpt-tokenizer/encoding/r50k_base';

export type TokenizerKind = 'char' | 'bpe' | 'bpe-full';

/** What a checkpoint stores to rebuild its tokenizer without the corpus. */
export interface TokenizerSpec {
  kind: TokenizerKind;
  /** 'char': the vocabulary's characters in id order. 'bpe': the GPT-2 id of each model id. */
  symbols?: string[];
  gpt2Ids?: number[];
}

export interface Tokenizer {
  readonly kind: TokenizerKind;
  readonly vocabSize: number;
  encode(text: string): number[];
  decode(ids: number[]): string;
  spec(): TokenizerSpec;
}

/** One id per character (code point) seen in the corpus: a ~80-symbol vocabulary for tiny models. */
export class CharTokenizer implements Tokenizer {
  readonly kind = 'char';
  private readonly ids: Map<string, number>;

  constructor(private readonly symbols: string[]) {
    this.ids = new Map(symbols.map((s, i) => [s, i]));
  }

  static fromCorpus(text: string): CharTokenizer {
    return new CharTokenizer([...new Set(Array.from(text))].sort());
  }

  get vocabSize(): number { return this.symbols.length; }

  encode(text: string): number[] {
    return Array.from(text, ch => {
      const id = this.ids.get(ch);
      if (id === undefined) throw new Error(`character ${JSON.stringify(ch)} is not in the vocabulary`);
      return id;
    });
  }

  decode(ids: number[]): string {
    return ids.map(id => this.symbols[id]).join('');
  }

  spec(): TokenizerSpec { return { kind: 'char', symbols: this.symbols }; }
}

/**
 * GPT-2's byte-pair encoding (r50k_base, 50257 tokens). With `compact`, model ids are renumbered
 * to the GPT-2 tokens the corpus actually uses (Moby-Dick uses 15,628 of 50,257), in GPT-2 id
 * order: the embedding and the output layer shrink 3.2×, and the text is tokenized exactly as GPT-2
 * does; a model trained this way just cannot emit tokens the book never contains.
 */
export class Gpt2Tokenizer implements Tokenizer {
  readonly kind: TokenizerKind;
  private readonly toModel: Map<number, number> | undefined;

  private constructor(private readonly gpt2Ids: number[] | undefined) {
    this.kind = gpt2Ids ? 'bpe' : 'bpe-full';
    this.toModel = gpt2Ids ? new Map(gpt2Ids.map((g, m) => [g, m])) : undefined;
  }

  static full(): Gpt2Tokenizer { return new Gpt2Tokenizer(undefined); }

  static compactFor(text: string): Gpt2Tokenizer {
    return new Gpt2Tokenizer([...new Set(bpeEncode(text))].sort((a, b) => a - b));
  }

  static fromGpt2Ids(gpt2Ids: number[]): Gpt2Tokenizer { return new Gpt2Tokenizer(gpt2Ids); }

  get vocabSize(): number { return this.gpt2Ids ? this.gpt2Ids.length : bpeVocabularySize; }

  encode(text: string): number[] {
    const ids = bpeEncode(text);
    const map = this.toModel;
    if (!map) return ids;
    return ids.map(g => {
      const id = map.get(g);
      if (id === undefined) throw new Error(`GPT-2 token ${g} is not in this model's vocabulary`);
      return id;
    });
  }

  decode(ids: number[]): string {
    const gpt2Ids = this.gpt2Ids;
    return bpeDecode(gpt2Ids ? ids.map(id => gpt2Ids[id]) : ids);
  }

  spec(): TokenizerSpec {
    return this.gpt2Ids ? { kind: 'bpe', gpt2Ids: this.gpt2Ids } : { kind: 'bpe-full' };
  }
}

/** The tokenizer of `kind` for a training text. */
export function tokenizerFor(kind: TokenizerKind, text: string): Tokenizer {
  switch (kind) {
    case 'char': return CharTokenizer.fromCorpus(text);
    case 'bpe': return Gpt2Tokenizer.compactFor(text);
    case 'bpe-full': return Gpt2Tokenizer.full();
  }
}

/** Rebuilds a checkpoint's tokenizer. */
export function tokenizerFromSpec(spec: TokenizerSpec): Tokenizer {
  switch (spec.kind) {
    case 'char':
      if (!spec.symbols) throw new Error('char tokenizer spec without symbols');
      return new CharTokenizer(spec.symbols);
    case 'bpe':
      if (!spec.gpt2Ids) throw new Error('compact GPT-2 tokenizer spec without gpt2Ids');
      return Gpt2Tokenizer.fromGpt2Ids(spec.gpt2Ids);
    case 'bpe-full': return Gpt2Tokenizer.full();
  }
}

export function isTokenizerKind(s: string): s is TokenizerKind {
  return s === 'char' || s === 'bpe' || s === 'bpe-full';
}
