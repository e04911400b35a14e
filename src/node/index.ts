export { ConsoleStreamBackend } from './console-stream.js';
export { FileBackend, type FileBackendOptions } from './file-backend.js';
export { UdpNetBackend, type UdpNetOptions } from './net-udp.js';
