// `courier serve`: durable streams on one node. The tests are in streams.suite.mjs; the same
// tests run on a three-node cluster in streams-cluster.test.mjs.

import { streamSuite } from "./streams.suite.mjs";

streamSuite("single");
