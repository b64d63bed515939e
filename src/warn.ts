const warned = new Set<string>();

/** Prints `message` the first time `key` is seen in this process. */
export function warnOnce(key: string, message: string): void {
  if (warned.has(key)) return;
  warned.add(key);
  console.warn(`tfjs-flash-attention: ${message}`);
}
