-- Statements the SQL fuzz starts from, one a line, over t (k INT, s VARCHAR, v DOUBLE).
SELECT k, count(*), sum(v) FROM t WHERE v > 1 GROUP BY k ORDER BY k
SELECT a.k, b.v FROM t a JOIN t b ON a.k = b.k AND a.v < b.v LIMIT 5
SELECT k, v, row_number() OVER (PARTITION BY k ORDER BY v) FROM t
SELECT * FROM t WHERE k IN (SELECT k FROM t WHERE v = 2) UNION ALL SELECT 1, 'x', 2.5
UPDATE t SET v = v * 2 WHERE k = 1
DELETE FROM t WHERE v IS NULL OR s LIKE 'b%'
INSERT INTO t VALUES (9, 'z', 9.5)
MERGE INTO t USING (SELECT 1 AS k, 'q' AS s) AS src ON t.k = src.k WHEN MATCHED THEN UPDATE SET s = src.s WHEN NOT MATCHED THEN INSERT VALUES (src.k, src.s, 0)
ALTER TABLE t ADD COLUMN w INT DEFAULT 3
CREATE TABLE u AS SELECT k, CAST(v AS VARCHAR) AS c FROM t
EXPLAIN SELECT s, max(v) FROM t GROUP BY s HAVING max(v) > 1
SELECT CASE WHEN v > 1 THEN 'big' ELSE s END, coalesce(s, 'none') FROM t ORDER BY 1 NULLS FIRST
