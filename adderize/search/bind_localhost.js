// Preloaded into NNI's node.js manager (NODE_OPTIONS=--require ...) by adderize.search:
// NNI 3.0 calls server.listen(port) with no host, which listens on every interface.
// Give such calls the loopback host so the web portal and REST API stay on this machine.
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args.length === 1 || typeof args[1] === 'function')) {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
