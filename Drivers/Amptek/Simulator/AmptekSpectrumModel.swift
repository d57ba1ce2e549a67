import Foundation

/// Expected count rate per MCA channel of the simulated X-123SDD looking at an operando cell:
/// Mn, Co and Ni K lines of an NMC cathode on a bremsstrahlung-like background from a 30 kV
/// tube, seen through a Be window, with the resolution of a silicon drift detector.
///
/// The nickel lines follow the cell's state of charge the way Ni oxidation (Ni²⁺ → Ni⁴⁺ on
/// charge) would show in a stylised picture: their intensity grows (×0.6 at SOC 0 to ×1.4 at
/// SOC 1) and they move up by a few eV (Kα +4 eV, Kβ +5 eV at full charge); cobalt moves
/// slightly, manganese (Mn⁴⁺ throughout) not at all.
///
/// Rates are rebuilt only when an input changes: channels, gain, threshold, peaking time, the
/// rate scale, or the state of charge by more than 0.001.
struct AmptekSpectrumModel {
    /// A fluorescence line: energy (keV) and rate (counts/s) at SOC 0, and how both move with SOC.
    struct Line {
        var name: String
        var energyKeV: Double
        var rateCps: Double
        /// Relative intensity change from SOC 0 to SOC 1.
        var intensityPerSOC: Double
        /// Energy shift from SOC 0 to SOC 1, keV.
        var shiftKeVPerSOC: Double
    }

    static let lines: [Line] = [
        Line(name: "Mn Ka", energyKeV: 5.899, rateCps: 900, intensityPerSOC: 0, shiftKeVPerSOC: 0),
        Line(name: "Mn Kb", energyKeV: 6.490, rateCps: 125, intensityPerSOC: 0, shiftKeVPerSOC: 0),
        Line(name: "Co Ka", energyKeV: 6.930, rateCps: 700, intensityPerSOC: 0.05, shiftKeVPerSOC: 0.001),
        Line(name: "Co Kb", energyKeV: 7.649, rateCps: 95, intensityPerSOC: 0.05, shiftKeVPerSOC: 0.001),
        Line(name: "Ni Ka", energyKeV: 7.478, rateCps: 1500 * 0.6, intensityPerSOC: 0.8 / 0.6, shiftKeVPerSOC: 0.004),
        Line(name: "Ni Kb", energyKeV: 8.265, rateCps: 210 * 0.6, intensityPerSOC: 0.8 / 0.6, shiftKeVPerSOC: 0.005),
    ]

    /// Tube voltage: the continuum ends here.
    static let tubeKeV = 30.0
    /// Continuum scattered into the detector, counts/s/keV at 15 keV.
    static let continuumAt15keV = 40.0
    static let fano = 0.115
    /// Energy per electron-hole pair in silicon, keV.
    static let pairEnergyKeV = 0.00365

    /// Full scale of the MCA in keV at gain 1 (gain 10 → 20.48 keV).
    static let fullScaleAtUnitGainKeV = 204.8

    private(set) var channels = 0
    private(set) var gain = 0.0
    private(set) var thresholdPercent = -1.0
    private(set) var peakingTimeUs = 0.0
    private(set) var rateScale = 0.0
    private(set) var stateOfCharge = -1.0
    /// Counts/s per channel arriving at the detector (before dead time).
    private(set) var rates: [Double] = [Double](repeating: 0, count: 8192)
    /// Sum of `rates` (events that land in the spectrum's range).
    private(set) var inRangeRate = 0.0
    /// Events above the top channel or below the threshold: seen by the fast channel only.
    private(set) var outOfRangeRate = 0.0
    private(set) var rebuilds = 0

    var totalRate: Double { inRangeRate + outOfRangeRate }
    var keVPerChannel: Double { Self.fullScaleAtUnitGainKeV / gain / Double(channels) }

    /// Makes the rates current; cheap when nothing moved.
    mutating func update(channels: Int, gain: Double, thresholdPercent: Double, peakingTimeUs: Double, rateScale: Double, stateOfCharge: Double) {
        if channels == self.channels, gain == self.gain, thresholdPercent == self.thresholdPercent,
            peakingTimeUs == self.peakingTimeUs, rateScale == self.rateScale, abs(stateOfCharge - self.stateOfCharge) <= 0.001
        {
            return
        }
        self.channels = channels
        self.gain = gain
        self.thresholdPercent = thresholdPercent
        self.peakingTimeUs = peakingTimeUs
        self.rateScale = rateScale
        self.stateOfCharge = stateOfCharge
        rebuild()
    }

    /// Gaussian σ of a line at `e` keV: electronic noise (falls with peaking time) and Fano
    /// statistics. About 140 eV FWHM at Mn Kα with a 1 µs peaking time.
    static func sigmaKeV(_ e: Double, peakingTimeUs: Double) -> Double {
        let noiseFWHM = 0.055 + 0.035 / max(0.2, peakingTimeUs)
        let noise = noiseFWHM / 2.3548
        return (noise * noise + fano * pairEnergyKeV * e).squareRoot()
    }

    /// Continuum, counts/s/keV: Kramers' (E0/E − 1) shape through a thin Be window.
    static func continuum(_ e: Double) -> Double {
        guard e > 0.05, e < tubeKeV else { return 0 }
        let kramers = (tubeKeV / e - 1) / (tubeKeV / 15 - 1)
        let window = exp(-pow(1.0 / e, 3))
        return continuumAt15keV * kramers * window
    }

    /// The energy and rate of `line` at state of charge `soc`.
    static func place(_ line: Line, soc: Double) -> (energyKeV: Double, rateCps: Double) {
        let s = min(max(soc, 0), 1)
        return (line.energyKeV + line.shiftKeVPerSOC * s, line.rateCps * (1 + line.intensityPerSOC * s))
    }

    private mutating func rebuild() {
        rebuilds += 1
        let width = keVPerChannel
        let fullScale = width * Double(channels)
        let threshold = thresholdPercent / 100 * fullScale
        for i in 0..<channels { rates[i] = 0 }
        // Continuum, integrated over each channel with the midpoint rule.
        for i in 0..<channels {
            let e = (Double(i) + 0.5) * width
            rates[i] = Self.continuum(e) * width
        }
        for line in Self.lines {
            let (e0, rate) = Self.place(line, soc: stateOfCharge)
            let sigma = Self.sigmaKeV(e0, peakingTimeUs: peakingTimeUs)
            let lo = max(0, Int(((e0 - 6 * sigma) / width).rounded(.down)))
            let hi = min(channels - 1, Int(((e0 + 6 * sigma) / width).rounded(.up)))
            guard lo <= hi else { continue }
            // Integrated over each channel, so a wide channel holds the right share.
            var below = 0.5 * erfc(-((Double(lo) * width - e0) / (sigma * 2.0.squareRoot())))
            for i in lo...hi {
                let upper = 0.5 * erfc(-((Double(i + 1) * width - e0) / (sigma * 2.0.squareRoot())))
                rates[i] += rate * (upper - below)
                below = upper
            }
        }
        var inRange = 0.0
        var cut = 0.0
        for i in 0..<channels {
            rates[i] *= rateScale
            if (Double(i) + 1) * width <= threshold {
                cut += rates[i]
                rates[i] = 0
            }
            inRange += rates[i]
        }
        inRangeRate = inRange
        // Continuum above full scale (to the tube voltage), for the fast channel.
        var above = 0.0
        var e = fullScale
        let step = 0.05
        while e < Self.tubeKeV {
            above += Self.continuum(e + step / 2) * step
            e += step
        }
        outOfRangeRate = cut + above * rateScale
    }
}
