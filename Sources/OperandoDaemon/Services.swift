import Logging
import OperandoIO
import ServiceLifecycle

/// Runs blocking work (joining threads, draining to disk) on a dedicated thread, so the
/// cooperative pool never waits on I/O.
func offPool(_ name: String, _ body: @escaping @Sendable () -> Void) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        _ = IOThread(name: name, detached: true) {
            body()
            continuation.resume()
        }
    }
}

/// The writer thread, for the life of the daemon. Shut down last: it drains and closes the run.
struct RecorderService: Service {
    let daemon: Daemon
    func run() async throws {
        daemon.recorder.start()
        daemon.recoverUnfinishedRuns()
        try? await gracefulShutdown()
        await offPool("recorder-stop") { daemon.shutdownRecorder(reason: "daemon stopping (SIGTERM/SIGINT)") }
    }
}

/// Every device's thread. Stopped before the writer, so the last records are in the rings when it drains.
struct DevicesService: Service {
    let daemon: Daemon
    func run() async throws {
        daemon.startDevices()
        try? await gracefulShutdown()
        await offPool("devices-stop") { daemon.stopDevices() }
    }
}

/// The control socket. READY=1 is sent once it listens.
struct ControlService: Service {
    let daemon: Daemon
    func run() async throws {
        let server = ControlServer(path: daemon.socketPath, handler: { [daemon] in daemon.handle($0, peer: $1) }, logger: daemon.logger)
        try server.start()
        daemon.logger.info("control socket listening at \(daemon.socketPath)")
        daemon.notifier.notify("READY=1\nSTATUS=idle, \(daemon.runners.count) device(s)")
        try? await gracefulShutdown()
        daemon.notifier.notify("STOPPING=1\nSTATUS=stopping: draining rings and closing the run")
        await offPool("control-stop") { server.stop() }
    }
}

/// Talks to systemd while the daemon runs: WATCHDOG=1 every WATCHDOG_USEC/2, but only while the
/// writer thread is making progress (a writer stuck on a hung disk lets systemd restart us), and a
/// STATUS= summary every few seconds for `systemctl status`.
struct SupervisorService: Service {
    let daemon: Daemon
    func run() async throws {
        var lastPing = daemon.clock.now()
        var lastStatus = lastPing
        var withheld = false
        if daemon.notifier.watchdogInterval != nil { daemon.notifier.notify("WATCHDOG=1") }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
            let now = daemon.clock.now()
            if let interval = daemon.notifier.watchdogInterval, now.nanoseconds - lastPing.nanoseconds >= interval.nanoseconds {
                let writerIdle = now.nanoseconds - daemon.recorder.lastHeartbeat.nanoseconds
                if writerIdle < interval.nanoseconds {
                    daemon.notifier.notify("WATCHDOG=1")
                    lastPing = now
                    withheld = false
                } else if !withheld {
                    daemon.logger.critical("the writer thread has not gone round for \(writerIdle / 1_000_000) ms; withholding WATCHDOG=1 so systemd restarts the daemon (data synced so far is safe)")
                    withheld = true
                }
            }
            if now.nanoseconds - lastStatus.nanoseconds >= 5_000_000_000 {
                daemon.notifier.notify("STATUS=" + daemon.statusLine())
                lastStatus = now
            }
        }
    }
}

extension Daemon {
    /// The daemon's services in start order; ServiceGroup stops them in reverse.
    public func services() -> [any Service] {
        [RecorderService(daemon: self), DevicesService(daemon: self), ControlService(daemon: self), SupervisorService(daemon: self)]
    }
}
