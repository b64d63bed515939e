// Picks the fastest tfjs backend Node can run here: WebGPU through Dawn on a real GPU, else WebGPU
// on SwiftShader (Vulkan on the CPU; what a machine without a GPU has), else tfjs' cpu backend.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { initDawn } from '../../src/node';

export type BackendRequest = 'auto' | 'webgpu' | 'cpu';

export interface BackendChoice {
  name: 'webgpu' | 'cpu';
  /** A line for the user: which device, and why this one. */
  description: string;
}

export function isBackendRequest(s: string): s is BackendRequest {
  return s === 'auto' || s === 'webgpu' || s === 'cpu';
}

export async function selectBackend(request: BackendRequest): Promise<BackendChoice> {
  if (request === 'cpu') return useCpu('cpu (requested)');
  try {
    // SwiftShader when Dawn finds no GPU: Debian's chromium package installs it.
    const gpu = await initDawn({ swiftShaderFallback: true });
    const kind = gpu.software ? 'SwiftShader, software Vulkan on the CPU: no GPU found' : 'GPU';
    return { name: 'webgpu', description: `webgpu through Dawn on ${gpu.description} (${kind})` };
  } catch (error) {
    if (request === 'webgpu') throw error;
    return useCpu(`cpu (no WebGPU adapter: ${error instanceof Error ? error.message : String(error)})`);
  }
}

async function useCpu(description: string): Promise<BackendChoice> {
  if (!(await tf.setBackend('cpu'))) throw new Error('tfjs could not start its cpu backend');
  return { name: 'cpu', description };
}
