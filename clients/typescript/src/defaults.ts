// The defaults every side of the contract shares: proto/nachbar/v1/defaults.json, copied into
// this package with the .proto files, the same file the Python client and the servers read.

import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { PROTO_ROOT } from './protos';

export interface Defaults {
  host: string;
  db_port: number;
  ai_port: number;
  timeout_seconds: number;
  max_message_bytes: number;
  store_original: boolean;
  truncation: 'error' | 'truncate';
  page_limit: number;
  db_upsert_batch: number;
  ai_upsert_batch: number;
}

export const DEFAULTS_FILE = path.join(PROTO_ROOT, 'nachbar', 'v1', 'defaults.json');

export const DEFAULTS: Readonly<Defaults> = Object.freeze(JSON.parse(readFileSync(DEFAULTS_FILE, 'utf8')) as Defaults);
