import ArgumentParser
import Foundation
import OperandoDaemon
import OperandoIO
import OperandoVirtualCell

/// Runs one instrument simulator on its own, so operandod (or a vendor's client) can reach it
/// over a real transport.
@main
struct OperandoSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operando-sim",
        abstract: "Serve an instrument simulator over a real transport.",
        discussion: """
            Example: operando-sim demo-potentiostat --listen 127.0.0.1:6501
            then in the daemon's config: transport = "tcp:127.0.0.1:6501".
            Serves one client at a time until SIGTERM/SIGINT.
            """)

    @Argument(help: "Simulator: demo-potentiostat.") var driver: String
    @Option(name: .long, help: "HOST:PORT to listen on (IPv4). Port 0 picks a free port, printed on stdout.") var listen: String
    @Option(name: .long, help: "Cell seconds per host second.") var timeScale: Double = 600
    @Option(name: .long, help: "Device name (used in the serial number).") var name = "sim"

    func run() throws {
        guard let colon = listen.lastIndex(of: ":"), let port = UInt16(listen[listen.index(after: colon)...]) else {
            throw ValidationError("--listen \(listen): expected HOST:PORT, e.g. 127.0.0.1:6501")
        }
        guard DriverRegistry.linkKind(driver) == .byteStream else {
            throw ValidationError("\(driver): no byte-stream simulator by that name; available: \(DriverRegistry.names.filter { DriverRegistry.linkKind($0) == .byteStream }.joined(separator: ", "))")
        }
        let clock = MonotonicRawClock()
        let listener = try TCPListener(host: String(listen[..<colon]), port: port, clock: clock)
        FileHandle.standardOutput.write(Data("operando-sim: \(driver) listening on \(listen[..<colon]):\(listener.port)\n".utf8))
        var params = VirtualCell.Parameters()
        params.timeScale = timeScale
        let cell = VirtualCell(params)
        TerminationSignal.install()
        while !TerminationSignal.received {
            guard let client = try listener.accept(timeout: .milliseconds(200)) else { continue }
            FileHandle.standardError.write(Data("operando-sim: client connected\n".utf8))
            try DriverRegistry.serveSimulator(driver, name: name, byteStream: client, cell: cell, clock: clock, shouldStop: { TerminationSignal.received })
            client.close()
            FileHandle.standardError.write(Data("operando-sim: client gone\n".utf8))
        }
    }
}

