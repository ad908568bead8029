// Three Courier nodes on a Redis Cluster of three masters started by the test (`--redis
// redis-cluster://...`): the tests of cluster.suite.mjs, with every channel a sharded one.

import { clusterSuite } from "./cluster.suite.mjs";

clusterSuite({ redisCluster: true });
