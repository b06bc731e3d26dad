// Loads the service definitions from the .proto files that `npm run build` copies from the
// repo's proto/ folder: no message is defined by hand in this package.

import * as path from 'node:path';
import * as protoLoader from '@grpc/proto-loader';
import type { AIServiceDefinition } from './generated/nachbar/ai/v1/AIService';
import type { DBServiceDefinition } from './generated/nachbar/db/v1/DBService';

/** The folder holding `nachbar/v1/*.proto` (from dist/src, the package root's proto/). */
export const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');

export const PROTO_FILES = ['nachbar/v1/db.proto', 'nachbar/v1/ai.proto'];

// scripts/protos.mjs generates the types with the same choices: field names as in the
// .proto, 64-bit ints as decimal strings (no precision loss), enums as their names, unset
// fields as defaults, and a virtual field naming each oneof's member.
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

let definitions: protoLoader.PackageDefinition | undefined;

function load(): protoLoader.PackageDefinition {
  definitions ??= protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
  return definitions;
}

export function dbService(): DBServiceDefinition {
  return load()['nachbar.db.v1.DBService'] as unknown as DBServiceDefinition;
}

export function aiService(): AIServiceDefinition {
  return load()['nachbar.ai.v1.AIService'] as unknown as AIServiceDefinition;
}
