// gpt-tokenizer publishes its encodings through package.json "exports", which TypeScript's "node"
// module resolution (this repo's tsconfig) does not read; the types live next to the CommonJS build.
declare module 'gpt-tokenizer/encoding/r50k_base' {
  export { encode, decode, vocabularySize } from 'gpt-tokenizer/cjs/encoding/r50k_base';
}
