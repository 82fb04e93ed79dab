#!/usr/bin/env node
// A third-party LwM2M client for aiotkit's interop tests: lwm2m-node-lib's (Telefonica)
// client, driven line by line.
//
//   node lwm2m_client.js --host 127.0.0.1 --port 5683 --endpoint EP [--lifetime S]
//
// Objects: /3/0 (Device: 0 manufacturer, 1 model, 2 serial, 3 firmware version) and
// /3303/0 (temperature: 5700 value, 5701 units). Writes one JSON object per line on stdout:
//   {"event": "registered", "location": "/rd/ID", "port": LOCAL_PORT}
//   {"event": "read" | "write" | "execute", "path": "/3/0/0", ...}
//   {"event": "updated"} {"event": "set", ...} {"event": "deregistered"}
//   {"event": "error", "message": "..."}
// Reads one JSON command per line on stdin:
//   {"cmd": "set", "path": "/3303/0/5700", "value": "22.5"}
//   {"cmd": "update"}   {"cmd": "deregister"} (then exits 0)
'use strict';

const readline = require('readline');

// lwm2m-node-lib pulls in mongoose, which warns about circular imports on node >= 14.
process.removeAllListeners('warning');

const lwm2m = require('lwm2m-node-lib');

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  if (i < 0 || i + 1 >= process.argv.length) {
    if (fallback === undefined) {
      fail(`missing --${name}`);
    }
    return fallback;
  }
  return process.argv[i + 1];
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message) {
  emit({ event: 'error', message: String(message) });
  process.exit(1);
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port'));
const endpoint = arg('endpoint');
const lifetime = arg('lifetime', '60');

const client = lwm2m.client;
const config = {
  logLevel: 'FATAL',
  client: {
    lifetime: lifetime,
    version: '1.0', // the library implements LwM2M 1.0 (text, no SenML)
    logLevel: 'FATAL',
    observe: { period: 3000 },
    ipProtocol: 'udp4',
    serverProtocol: 'udp4',
    formats: [{ name: 'lightweightm2m/text', value: 1541 }],
    writeFormat: 'lightweightm2m/text',
  },
};

const RESOURCES = [
  ['/3/0', 0, 'Telefonica lwm2m-node-lib'],
  ['/3/0', 1, 'interop-client'],
  ['/3/0', 2, 'SN-' + endpoint],
  ['/3/0', 3, '1.4.0'],
  ['/3303/0', 5700, '21.5'],
  ['/3303/0', 5701, 'Cel'],
];

function step(fn) {
  return new Promise((resolve, reject) => {
    fn((error, result) => (error ? reject(error) : resolve(result)));
  });
}

function splitPath(path) {
  const m = /^(\/\d+\/\d+)\/(\d+)$/.exec(path);
  if (!m) {
    throw new Error(`not a resource path: ${path}`);
  }
  return [m[1], Number(m[2])];
}

async function main() {
  client.init(config);
  for (const uri of new Set(RESOURCES.map((r) => r[0]))) {
    await step((cb) => client.registry.create(uri, cb));
  }
  for (const [uri, rid, value] of RESOURCES) {
    await step((cb) => client.registry.setResource(uri, rid, value, cb));
  }
  const info = await step((cb) => client.register(host, port, '', endpoint, cb));
  const server = info.serverInfo;
  client.setHandler(server, 'read', (objectType, objectId, resourceId, value, cb) => {
    emit({ event: 'read', path: `/${objectType}/${objectId}/${resourceId}`,
      value: String(value) });
    cb(null);
  });
  client.setHandler(server, 'write', (objectType, objectId, resourceId, value, cb) => {
    emit({ event: 'write', path: `/${objectType}/${objectId}/${resourceId}`,
      value: String(value) });
    cb(null);
  });
  client.setHandler(server, 'execute', (objectType, objectId, resourceId, args, cb) => {
    emit({ event: 'execute', path: `/${objectType}/${objectId}/${resourceId}`,
      args: args === undefined || args === null ? null : String(args) });
    cb(null);
  });
  const location = info.location.startsWith('/') ? info.location : '/' + info.location;
  emit({ event: 'registered', location, port: info.localPort });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) {
      continue;
    }
    let cmd;
    try {
      cmd = JSON.parse(line);
      if (cmd.cmd === 'set') {
        const [uri, rid] = splitPath(cmd.path);
        await step((cb) => client.registry.setResource(uri, rid, String(cmd.value), cb));
        emit({ event: 'set', path: cmd.path, value: String(cmd.value) });
      } else if (cmd.cmd === 'update') {
        await step((cb) => client.update(info, cb));
        emit({ event: 'updated' });
      } else if (cmd.cmd === 'deregister') {
        await step((cb) => client.unregister(info, cb));
        emit({ event: 'deregistered' });
        process.exit(0);
      } else {
        emit({ event: 'error', message: `unknown command ${line}` });
      }
    } catch (error) {
      emit({ event: 'error', message: String(error && error.message ? error.message : error) });
    }
  }
  // stdin closed without a deregister: leave without one (a node that lost power).
  process.exit(0);
}

main().catch(fail);
