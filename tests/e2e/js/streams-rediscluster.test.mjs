// Durable streams on a hub of three `courier serve --redis redis-cluster://...` nodes on a Redis
// Cluster of three masters started by the test: the tests of streams.suite.mjs, their streams'
// keys spread over the cluster's shards, notices and the nodes' channels on sharded pub/sub.

import { streamSuite } from "./streams.suite.mjs";

streamSuite("redis-cluster");
