// Copies the repo's .proto files and defaults.json (the single source of truth) into this
// package and generates
// TypeScript types for them. Run by `npm run build`; both outputs are build products, never
// edited or committed, so they cannot drift from proto/.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const repoProtoDir = resolve(packageDir, '..', '..', 'proto', 'nachbar', 'v1');
const protoRoot = join(packageDir, 'proto');
const packageProtoDir = join(protoRoot, 'nachbar', 'v1');
const generatedDir = join(packageDir, 'src', 'generated');
const protoFiles = ['nachbar/v1/db.proto', 'nachbar/v1/ai.proto'];

if (existsSync(repoProtoDir)) {
  rmSync(protoRoot, { recursive: true, force: true });
  mkdirSync(packageProtoDir, { recursive: true });
  for (const name of readdirSync(repoProtoDir)) {
    if (name.endsWith('.proto') || name === 'defaults.json') {
      copyFileSync(join(repoProtoDir, name), join(packageProtoDir, name));
    }
  }
} else if (!existsSync(packageProtoDir)) {
  // Outside the repo (an unpacked package tarball) the copy made at pack time is used.
  console.error(`no .proto files: neither ${repoProtoDir} nor ${packageProtoDir} exists`);
  process.exit(1);
}

// These flags must match LOADER_OPTIONS in src/protos.ts: the types describe what the loader
// produces.
const require = createRequire(import.meta.url);
const loaderDir = dirname(require.resolve('@grpc/proto-loader/package.json'));
rmSync(generatedDir, { recursive: true, force: true });
const result = spawnSync(
  process.execPath,
  [
    join(loaderDir, 'build', 'bin', 'proto-loader-gen-types.js'),
    ...protoFiles,
    '--grpcLib=@grpc/grpc-js',
    '--outDir=src/generated',
    '--keepCase',
    '--longs=String',
    '--enums=String',
    '--defaults',
    '--oneofs',
    // Last: yargs reads every following word as another include dir. Relative paths keep the
    // build machine's folders out of the generated files.
    '-I',
    'proto',
  ],
  { cwd: packageDir, stdio: 'inherit' },
);
if (result.status !== 0) {
  console.error('proto-loader-gen-types failed');
  process.exit(result.status ?? 1);
}
