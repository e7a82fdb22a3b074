<?php
// pdo_prepared.php - N forked PHP PDO pgsql clients (the driver Nextcloud uses) against a
// PostgreSQL endpoint, with native prepares (ATTR_EMULATE_PREPARES = false).
//
// PDO sends named protocol-level prepared statements (pdo_stmt_00000001, ...; every connection
// starts at 1, so the same names appear on all connections). Each client prepares its statements
// once and executes them on every iteration, mixing autocommit statements, explicit transactions
// (BEGIN; INSERT; SELECT count; COMMIT) and one freshly prepared, then destroyed (DEALLOCATE),
// statement per iteration. Every result is checked. Through a transaction pooler that does not
// track prepared statements (pgbouncer 1.18) this fails with "prepared statement ... does not
// exist / already exists"; directly or through a session pooler it must pass.
//
// Usage: php pdo_prepared.php --host H --port P --user U --password PW --dbname D
//            --clients N --iterations K [--timeout SECONDS]
// Success: one line "ok: N clients x K iterations, S statements", exit 0.
// Failure: one line per failing client with the driver's error message, exit 1.

$o = getopt('', ['host:', 'port:', 'user:', 'password:', 'dbname:', 'clients:', 'iterations:', 'timeout:']);
foreach (['host', 'port', 'user', 'password', 'dbname', 'clients', 'iterations'] as $k) {
    if (!isset($o[$k])) { fwrite(STDERR, "missing --$k\n"); exit(2); }
}
$N = (int)$o['clients']; $K = (int)$o['iterations']; $timeout = (int)($o['timeout'] ?? 60);
$table = 'pgr_pdo_' . getmypid() . '_' . bin2hex(random_bytes(3));

function connect(array $o): PDO {
    return new PDO("pgsql:host={$o['host']};port={$o['port']};dbname={$o['dbname']}", $o['user'], $o['password'],
        [PDO::ATTR_EMULATE_PREPARES => false, PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_TIMEOUT => 10]);
}
function expect($got, $want, string $what): void {
    if ((string)$got !== (string)$want) throw new RuntimeException("$what: got " . var_export($got, true) . ", want $want");
}
function one_line(Throwable $e): string { return preg_replace('/\s+/', ' ', trim($e->getMessage())); }

// One client: returns the number of prepared statements it executed; throws on any failure.
function client(PDO $pdo, int $c, int $K, string $table): int {
    $add = $pdo->prepare("SELECT ?::int + ?::int + $c AS r");          // per-client texts
    $cat = $pdo->prepare("SELECT ?::text || ?::text || '/c$c' AS r");
    $ins = $pdo->prepare("INSERT INTO $table (client, i, v) VALUES (?, ?, ?) -- client $c");
    $cnt = $pdo->prepare("SELECT count(*) AS n_$c FROM $table WHERE client = ?");
    $n = 0; $rows = 0;
    for ($i = 0; $i < $K; $i++) {
        $add->execute([$i, 1000]); expect($add->fetchColumn(), $i + 1000 + $c, "add"); $n++;
        $cat->execute(["a$i", "b"]); expect($cat->fetchColumn(), "a{$i}b/c$c", "concat"); $n++;
        $once = $pdo->prepare("SELECT ?::int * " . ($i % 7 + 2) . " AS r");   // prepared, used once, deallocated
        $once->execute([$c]); expect($once->fetchColumn(), $c * ($i % 7 + 2), "once"); $n++;
        $once = null;
        if ($i % 5 == 0) {
            $pdo->beginTransaction();
            $ins->execute([$c, $i, "v$i"]); $rows++; $n++;
            $cnt->execute([$c]); expect($cnt->fetchColumn(), $rows, "count in transaction"); $n++;
            $pdo->commit();
        }
    }
    return $n;
}

try {
    $pdo = connect($o);
    $pdo->exec("CREATE TABLE $table (client int NOT NULL, i int NOT NULL, v text NOT NULL)");
    $pdo = null;
} catch (Throwable $e) { echo "setup: ", one_line($e), "\n"; exit(1); }

// Fork the clients; each reports "ok <count>" or "fail <message>" over its own socket pair.
$socks = [];
for ($c = 0; $c < $N; $c++) {
    $pair = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
    $pid = pcntl_fork();
    if ($pid === 0) {
        fclose($pair[0]);
        try { $r = 'ok ' . client(connect($o), $c, $K, $table); }
        catch (Throwable $e) { $r = 'fail ' . one_line($e); }
        fwrite($pair[1], $r);
        fclose($pair[1]);
        exit(0);
    }
    fclose($pair[1]);
    $socks[$c] = $pair[0]; $pids[$c] = $pid; $out[$c] = '';
}

$deadline = time() + $timeout; $open = $socks;
while ($open && time() < $deadline) {
    $r = array_values($open); $w = $e = null;
    if (stream_select($r, $w, $e, 1) > 0) {
        foreach ($open as $c => $s) {
            if (!in_array($s, $r, true)) continue;
            $chunk = fread($s, 65536);
            if ($chunk === '' || $chunk === false) { unset($open[$c]); } else { $out[$c] .= $chunk; }
        }
    }
}
foreach ($open as $c => $s) { posix_kill($pids[$c], SIGKILL); $out[$c] = "fail timed out after {$timeout}s"; }
foreach ($pids as $pid) pcntl_waitpid($pid, $status);

$failed = false; $total = 0;
foreach ($out as $c => $line) {
    if (str_starts_with($line, 'ok ')) { $total += (int)substr($line, 3); continue; }
    $failed = true;
    echo "client $c: ", ($line === '' ? 'exited without a result' : substr($line, 5)), "\n";
}

// Verify what the transactions committed, then drop the table.
try {
    $pdo = connect($o);
    if (!$failed) {
        $per = intdiv($K + 4, 5);
        $st = $pdo->prepare("SELECT count(*) AS n, count(DISTINCT client) AS c FROM $table");
        $st->execute(); $row = $st->fetch(PDO::FETCH_ASSOC);
        expect($row['n'], $N * $per, "final row count"); expect($row['c'], $N, "final client count");
        $total++;
    }
    $pdo->exec("DROP TABLE $table");
} catch (Throwable $e) { echo "verify: ", one_line($e), "\n"; $failed = true; }

if ($failed) exit(1);
echo "ok: $N clients x $K iterations, $total statements\n";
exit(0);
