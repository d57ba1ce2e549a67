import Foundation
import NanonisSimulator
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import OperandoTestSupport
import XCTest

/// Level 4: SPECS Zurich's own client (nanonis-spm from PyPI) against the simulator, served here
/// on a real TCP port, through scripts/nanonis-check.sh --port (which installs the client in a
/// virtualenv the first time, so this test needs PyPI once).
final class NanonisPeerClientTests: XCTestCase {
    func testOfficialClient_drivesTheSimulatorOverTCP() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = repo.appendingPathComponent("scripts/nanonis-check.sh")
        let clock = MonotonicRawClock()
        let listener = try TCPListener(host: "127.0.0.1", port: 0, clock: clock)
        let simulator = NanonisSimulator(cell: VirtualCell(), clock: clock, seed: 11)
        let stop = StopFlag()
        // One client at a time, as operando-sim serves them.
        let server = IOThread(name: "nanonis-tcp") {
            while !stop.isSet {
                guard let client = try? listener.accept(timeout: .milliseconds(100)) else { continue }
                simulator.serve(client, shouldStop: { stop.isSet })
                client.close()
            }
        }
        defer {
            stop.set()
            server.join()
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script.path, "--port", String(listener.port)]
        process.currentDirectoryURL = repo
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, text)
        let summary = try XCTUnwrap(text.split(separator: "\n").last { $0.hasPrefix("{") }, text)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(summary.utf8)) as? [String: Any])
        XCTAssertEqual(json["ok"] as? Bool, true, text)
        XCTAssertEqual(simulator.currentBias, 0.5, "the client's Bias.Set reached the simulator")
    }
}
