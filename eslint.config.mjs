// Flat config: ESLint's and typescript-eslint's recommended rules on the whole repository, minus
// what git ignores (build outputs, bundles, node_modules).
import { existsSync, readFileSync } from 'node:fs';
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/** .gitignore patterns as flat-config globs: a pattern without an inner slash matches at any depth. */
function gitIgnored() {
  if (!existsSync('.gitignore')) return [];
  return readFileSync('.gitignore', 'utf8').split('\n').map(line => line.trim())
    .filter(line => line && !line.startsWith('#') && !line.startsWith('!'))
    .map(line => (line.startsWith('/') ? line.slice(1) : line.replace(/\/$/, '').includes('/') ? line : `**/${line}`));
}

const nodeGlobals = {
  require: 'readonly', module: 'writable', exports: 'writable', __dirname: 'readonly', __filename: 'readonly',
  process: 'readonly', console: 'readonly', Buffer: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly',
  URL: 'readonly',
};

export default tseslint.config(
  { ignores: [...gitIgnored(), '.*/', '**/*.min.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // `_name` marks a parameter kept for its position (test.each rows, callbacks).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['**/*.js', '**/*.cjs', '**/*.mjs'],
    languageOptions: { globals: nodeGlobals },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
