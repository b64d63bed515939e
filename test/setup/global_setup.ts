// Jest global setup: runs once in jest's own process, whose environment the test workers inherit.
import { selectVulkanDriver } from './webgpu_node';

export default function globalSetup(): void {
  selectVulkanDriver();
}
