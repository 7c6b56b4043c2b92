#!/usr/bin/env node
// Publish one signed record to intelbus from Node.js: the steps of docs/integrators.md.
//
//   node publish.js KEY_FILE RECORD_JSON [--kind incident]
//   node publish.js --self-test          prints the HMAC of a fixed value with a fixed key (no Kafka, no registry)
//
// Environment: INTELBUS_KAFKA (default 127.0.0.1:9092), INTELBUS_REGISTRY_URL
// (default http://127.0.0.1:8081/apis/ccompat/v7); the system's broker principal and password:
// INTELBUS_KAFKA_USER and INTELBUS_KAFKA_PASSWORD_<USER> (upper case, '-' and '.' as '_'),
// sent with SASL/SCRAM-SHA-512; INTELBUS_KAFKA_CA (a PEM file): connect with TLS, trusting that CA.
//
// RECORD_JSON holds the record as the topic's Avro schema describes it (schemas/avro/*.avsc),
// already normalised (resident IDs 18 characters with upper-case X, plates upper-case without
// spaces, timestamps as UTC epoch milliseconds). For convenience this example fills revision (1),
// event_id (UUIDv5, as intelbus derives it), reported_at (now) and accepts occurred_at as an
// ISO-8601 string.
'use strict';

const crypto = require('crypto');
const fs = require('fs');

const HEADER_KEY_ID = 'intelbus-key-id';
const HEADER_SIGNATURE = 'intelbus-signature';
const HEADER_ALG = 'intelbus-signature-alg';
const ALGORITHM = 'HMAC-SHA256';
// schemas/ids.py: event ids are UUIDv5 of "REGION/SYSTEM/REF#REVISION" in this namespace
const EVENT_NAMESPACE = '6f1c3e0a-8a4b-5d2e-9c71-1b2a3c4d5e6f';

function readKeyFile(path) {
  const doc = JSON.parse(fs.readFileSync(path, 'utf8'));
  for (const field of ['key_id', 'system', 'secret_hex', 'regions']) {
    if (!(field in doc)) throw new Error(`key file ${path}: missing ${field}`);
  }
  const secret = Buffer.from(doc.secret_hex, 'hex');  // the 32 bytes, not the hex text, key the HMAC
  if (secret.length !== 32) throw new Error(`key file ${path}: secret_hex must be 64 hex digits`);
  return { keyId: doc.key_id, system: doc.system, secret, regions: doc.regions };
}

// The three headers: HMAC-SHA256 over EXACTLY the Kafka message value (the whole wire-format buffer).
function signHeaders(value, key) {
  const signature = crypto.createHmac('sha256', key.secret).update(value).digest('hex');  // lowercase hex
  return { [HEADER_KEY_ID]: key.keyId, [HEADER_SIGNATURE]: signature, [HEADER_ALG]: ALGORITHM };
}

// Confluent wire format: magic byte 0, schema id as 4-byte big-endian, Avro binary body.
function wireFormat(schemaId, avroBody) {
  const header = Buffer.alloc(5);
  header.writeUInt8(0, 0);
  header.writeUInt32BE(schemaId, 1);
  return Buffer.concat([header, avroBody]);
}

function uuid5(namespace, name) {
  const ns = Buffer.from(namespace.replace(/-/g, ''), 'hex');
  const h = crypto.createHash('sha1').update(ns).update(Buffer.from(name, 'utf8')).digest();
  h[6] = (h[6] & 0x0f) | 0x50;
  h[8] = (h[8] & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

function eventId(record) {
  return uuid5(EVENT_NAMESPACE, `${record.source_region}/${record.source_system}/${record.source_ref}#${record.revision}`);
}

function complete(record) {
  const out = { ...record };
  if (out.revision === undefined) out.revision = 1;
  if (typeof out.occurred_at === 'string') out.occurred_at = Date.parse(out.occurred_at);
  if (out.reported_at === undefined) out.reported_at = Date.now();
  if (out.event_id === undefined) out.event_id = eventId(out);
  return out;
}

async function latestSchema(registryUrl, subject) {
  const res = await fetch(`${registryUrl.replace(/\/$/, '')}/subjects/${encodeURIComponent(subject)}/versions/latest`);
  if (!res.ok) throw new Error(`registry ${registryUrl}: subject ${subject}: HTTP ${res.status} ${await res.text()}`);
  const body = await res.json();
  return { id: body.id, schema: JSON.parse(body.schema) };
}

async function publish(keyFile, recordFile, kind) {
  const avro = require('avsc');
  const { Kafka, Partitioners } = require('kafkajs');

  const key = readKeyFile(keyFile);
  const topic = `intel.${kind}`;
  const registryUrl = process.env.INTELBUS_REGISTRY_URL || 'http://127.0.0.1:8081/apis/ccompat/v7';
  const { id, schema } = await latestSchema(registryUrl, `${topic}-value`);
  // logical types (timestamp-millis, uuid, date) are written as their underlying long/string/int
  const type = avro.Type.forSchema(schema);
  const record = complete(JSON.parse(fs.readFileSync(recordFile, 'utf8')));
  const value = wireFormat(id, type.toBuffer(record));
  const headers = signHeaders(value, key);
  // Kafka key REGION/SYSTEM/REF: every revision of a record on one partition
  const kafkaKey = `${record.source_region}/${record.source_system}/${record.source_ref}`;

  const kafka = new Kafka({ clientId: `intelbus-node-${key.system}`,
                            brokers: (process.env.INTELBUS_KAFKA || '127.0.0.1:9092').split(','),
                            ...brokerCredentials(process.env) });
  // KafkaJS 2's default partitioner is the Java client's murmur2: the same partition as intelbus's own producers
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, idempotent: true });
  await producer.connect();
  try {
    const [meta] = await producer.send({ topic, acks: -1, messages: [{ key: kafkaKey, value, headers }] });
    console.log(JSON.stringify({ topic, partition: meta.partition, offset: meta.baseOffset, key: kafkaKey,
                                 event_id: record.event_id, schema_id: id, key_id: key.keyId }));
  } finally {
    await producer.disconnect();
  }
}

// The broker takes SCRAM-SHA-512 logins only (ops/acls.yaml says what each principal may do).
function brokerCredentials(env) {
  const username = env.INTELBUS_KAFKA_USER;
  if (!username) throw new Error('set INTELBUS_KAFKA_USER to your system\'s broker principal (and its password)');
  const variable = 'INTELBUS_KAFKA_PASSWORD_' + username.toUpperCase().replace(/[-.]/g, '_');
  const password = env[variable];
  if (!password) throw new Error(`set ${variable}: the password of broker principal ${username}`);
  const conf = { sasl: { mechanism: 'scram-sha-512', username, password } };
  if (env.INTELBUS_KAFKA_CA) conf.ssl = { ca: [fs.readFileSync(env.INTELBUS_KAFKA_CA, 'utf8')] };
  return conf;
}

// Fixed inputs, also computed by tests/unit/producers/test_signing.py: a change on either side shows.
function selfTest() {
  const key = { keyId: 'selftest-1', system: 'selftest',
                secret: Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex') };
  const value = wireFormat(1, Buffer.from('intelbus self-test', 'utf8'));
  const headers = signHeaders(value, key);
  const record = { source_region: '130822', source_system: 'ztry', source_ref: 'JQ1', revision: 1 };
  console.log(JSON.stringify({ value_hex: value.toString('hex'), signature: headers[HEADER_SIGNATURE],
                               key_id: headers[HEADER_KEY_ID], alg: headers[HEADER_ALG], event_id: eventId(record) }));
}

function main(argv) {
  if (argv.includes('--self-test')) return selfTest();
  let kind = 'incident';
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--kind') kind = argv[++i];
    else positional.push(argv[i]);
  }
  if (positional.length !== 2 || !['alert', 'wanted', 'incident'].includes(kind)) {
    console.error('usage: node publish.js KEY_FILE RECORD_JSON [--kind alert|wanted|incident]\n'
                  + '       node publish.js --self-test');
    process.exit(2);
  }
  publish(positional[0], positional[1], kind).catch((err) => {
    console.error(`publish.js: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { signHeaders, wireFormat, eventId, readKeyFile };

if (require.main === module) main(process.argv.slice(2));
