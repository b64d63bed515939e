const os = require('os');

/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.json', diagnostics: { warnOnly: false } }] },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  testTimeout: 120000,
  globalSetup: '<rootDir>/test/setup/global_setup.ts',
  // At most 2 workers (1 on a 2-core machine, as in CI): browser and SwiftShader tests are CPU-bound.
  maxWorkers: Math.max(1, Math.min(2, os.cpus().length - 1)),
};
