// Three Courier nodes on one redis-server: the tests of cluster.suite.mjs.

import { clusterSuite } from "./cluster.suite.mjs";

clusterSuite();
