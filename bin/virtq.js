#!/usr/bin/env node
// The `virtq` command. npm links this file into node_modules/.bin (and npx runs it there), so
// it must not rely on being the script Node was started with: it calls the CLI's entry itself.
import { main } from '../dist/cli/main.js';

await main(process.argv);
