export {
  createNetPair,
  formatMac,
  type NetBackend,
  NetPairEndpoint,
  type NetPort,
  NetSwitch,
  type NetSwitchOptions,
  NetSwitchPort,
  parseMac,
} from './backend.js';
export { NET_RX_QUEUE, NET_TX_QUEUE, NetDevice, type NetOptions } from './device.js';
export { FrameRing } from './frame-ring.js';
export {
  buildTcpSegment,
  completeChecksum,
  foldSum,
  isTcpGso,
  onesSum,
  parseTcpGso,
  type TcpGso,
  tcpGsoScratch,
} from './offload.js';
export * from './request.js';
export {
  emptyNetStats,
  fromBase64,
  type NetSavedChain,
  type NetSavedFrame,
  type NetState,
  type NetStats,
  readNetState,
  toBase64,
} from './state.js';
