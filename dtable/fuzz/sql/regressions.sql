-- Statements reported to make SQL planners panic (in DataFusion's issues, from SQLancer) and
-- other edge cases: each must be answered, or refused with a one-line error.
SELECT a.b.c.d.e.f
SELECT count(DISTINCT) FROM t
SELECT 1 GROUP BY substr('' || false)
SELECT 1 WHERE substr('' || false)
EXPLAIN EXPLAIN SELECT * FROM t
WITH gp AS (SELECT k FROM t GROUP BY k) SELECT count(CAST(CAST(gp.k || '' AS TIMESTAMP) AS BIGINT)) FROM gp
SELECT count(count(k)) / k FROM t
SELECT * FROM t WHERE k IN (SELECT k, v FROM t)
SELECT unnest(make_array(k, NULL)), unnest(make_array()) FROM t
SELECT k FROM t ORDER BY 99
SELECT sum(v) OVER (ORDER BY k RANGE BETWEEN 1 PRECEDING AND 'x' FOLLOWING) FROM t
UPDATE t SET k = (SELECT k FROM t)
DELETE FROM t WHERE k = (SELECT max(k) FROM t WHERE v > (SELECT min(v) FROM t))
INSERT INTO t SELECT * FROM t WHERE false
ALTER TABLE t ADD COLUMN k INT
UPDATE t SET k = (SELECT FROM t)
