// esbuild bundles .txt files as strings (`--loader:.txt=text`, see serve.ts).
declare module '*.txt' {
  const text: string;
  export default text;
}
