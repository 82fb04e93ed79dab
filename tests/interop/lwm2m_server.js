#!/usr/bin/env node
// A third-party LwM2M server for aiotkit's interop tests: lwm2m-node-lib's (Telefonica)
// server, in memory, driven line by line.
//
//   node lwm2m_server.js --port PORT
//
// Writes one JSON object per line on stdout:
//   {"event": "listening", "port": PORT}
//   {"event": "registration", "endpoint": EP, "lifetime": "60", "version": "1.1",
//    "binding": "U", "payload": "</1/0>,...", "address": "127.0.0.1", "port": 40000}
//   {"event": "update", "endpoint": EP, "payload": "..."}
//   {"event": "deregistration", "endpoint": EP}
//   {"event": "result", "id": ID, "value": "..."} or
//   {"event": "result", "id": ID, "error": "...", "code": "4.04"} (answers to commands)
// Reads one JSON command per line on stdin (answered with a "result" carrying its id):
//   {"id": 1, "cmd": "read", "endpoint": EP, "path": "/3/0/0"}
//   {"id": 2, "cmd": "discover", "endpoint": EP, "path": "/3/0"}
//   {"id": 3, "cmd": "list"}
'use strict';

const readline = require('readline');

process.removeAllListeners('warning'); // mongoose's circular-import warnings on node >= 14

const lwm2m = require('lwm2m-node-lib');

const server = lwm2m.server;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function arg(name) {
  const i = process.argv.indexOf('--' + name);
  if (i < 0 || i + 1 >= process.argv.length) {
    emit({ event: 'error', message: `missing --${name}` });
    process.exit(2);
  }
  return process.argv[i + 1];
}

const config = {
  port: Number(arg('port')),
  lifetimeCheckInterval: 1000,
  udpWindow: 100,
  defaultType: 'Device',
  logLevel: 'FATAL',
  ipProtocol: 'udp4',
  serverProtocol: 'udp4',
  deviceRegistry: { type: 'memory' },
  formats: [
    { name: 'application-vnd-oma-lwm2m/text', value: 1541 },
    { name: 'application-vnd-oma-lwm2m/tlv', value: 1542 },
    { name: 'application-vnd-oma-lwm2m/json', value: 1543 },
    { name: 'application-vnd-oma-lwm2m/opaque', value: 1544 },
  ],
  writeFormat: 'application-vnd-oma-lwm2m/text',
  defaultAcceptFormat: 'text/plain',
};

function pathIds(path) {
  const m = /^\/(\d+)(?:\/(\d+))?(?:\/(\d+))?$/.exec(path || '');
  if (!m) {
    throw new Error(`not an LwM2M path: ${path}`);
  }
  return [m[1], m[2], m[3]];
}

function device(endpoint) {
  return new Promise((resolve, reject) => {
    server.getDevice(endpoint, (error, dev) => (error ? reject(error) : resolve(dev)));
  });
}

function call(fn, ...args) {
  return new Promise((resolve, reject) => {
    fn(...args, (error, result) => (error ? reject(error) : resolve(result)));
  });
}

async function run(cmd) {
  if (cmd.cmd === 'list') {
    const devices = await call(server.listDevices);
    const list = Array.isArray(devices) ? devices : devices.devices || [];
    return list.map((d) => ({ endpoint: d.name, id: d.id, address: d.address, port: d.port }));
  }
  const dev = await device(cmd.endpoint);
  const [oid, iid, rid] = pathIds(cmd.path);
  if (cmd.cmd === 'read') {
    if (rid === undefined) {
      throw new Error('lwm2m-node-lib reads resources only (/O/I/R)');
    }
    return call(server.read, dev.id, oid, iid, rid);
  }
  if (cmd.cmd === 'discover') {
    const args = [dev.id, oid];
    if (iid !== undefined) args.push(iid);
    if (rid !== undefined) args.push(rid);
    return call(server.discover, ...args);
  }
  throw new Error(`unknown command ${cmd.cmd}`);
}

function main() {
  server.start(config, (error, info) => {
    if (error) {
      emit({ event: 'error', message: String(error.message || error) });
      process.exit(1);
    }
    server.setHandler(info, 'registration', (endpoint, lifetime, version, binding, payload,
      callback) => {
      // the library has stored the device and its address before calling this
      server.getDevice(endpoint, (err, dev) => {
        emit({ event: 'registration', endpoint, lifetime, version, binding, payload,
          address: dev ? dev.address : null, port: dev ? dev.port : null });
        callback();
      });
    });
    server.setHandler(info, 'updateRegistration', (obj, payload, callback) => {
      emit({ event: 'update', endpoint: obj.name, payload });
      callback();
    });
    server.setHandler(info, 'unregistration', (obj, callback) => {
      emit({ event: 'deregistration', endpoint: obj ? obj.name : null });
      callback();
    });
    emit({ event: 'listening', port: config.port });
    const lines = readline.createInterface({ input: process.stdin });
    lines.on('line', (line) => {
      if (!line.trim()) {
        return;
      }
      let cmd;
      try {
        cmd = JSON.parse(line);
      } catch (e) {
        emit({ event: 'result', id: null, error: `not JSON: ${line}` });
        return;
      }
      run(cmd).then(
        (value) => emit({ event: 'result', id: cmd.id, value }),
        (e) => emit({ event: 'result', id: cmd.id, error: String(e.message || e.name || e),
          code: e.code || null }),
      );
    });
    lines.on('close', () => server.stop(info, () => process.exit(0)));
  });
}

main();
