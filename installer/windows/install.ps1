<#
.SYNOPSIS
  Install (or upgrade) the frozen edgeseg runtime on Windows and register the watcher as a Windows service.

.DESCRIPTION
  NOT RUN ON WINDOWS BY THE PROJECT YET (see installer/README.md): written for Windows 10/11 and Server 2019+,
  PowerShell 5.1, run as Administrator from the unpacked archive edgeseg-<version>-win-amd64\.

  * program:        C:\Program Files\edgeseg\            (-InstallDir)
  * configuration:  C:\ProgramData\edgeseg\watch_config.yaml   (never overwritten once there)
  * state, logs:    C:\ProgramData\edgeseg\state, \logs;  bundles: \bundles\demo;  default watch folder: \incoming
  * service:        "edgeseg", automatic start, restarts on failure, runs as LocalSystem (-ServiceAccount to change)

  Why NSSM: edgeseg.exe is a console program and does not speak the Windows service-control protocol, so a plain
  `sc.exe create ... binPath= edgeseg.exe` service is killed by Windows after 30 s (error 1053). NSSM (the
  Non-Sucking Service Manager, a single public-domain exe, https://nssm.cc) wraps it: it starts edgeseg.exe, sends
  Ctrl+C on stop (the watcher then finishes the running series, stop_grace_s), and restarts it when it fails.
  Give its path with -Nssm, or put nssm.exe next to this script or on PATH. Without NSSM, -ScheduledTask registers
  a start-up task running as SYSTEM with restart on failure instead (no service entry; stop it with
  Stop-ScheduledTask).

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File .\install.ps1 -Nssm C:\tools\nssm.exe
.EXAMPLE
  .\install.ps1 -ScheduledTask
#>
[CmdletBinding()]
param(
    [string]$Source = $PSScriptRoot,
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'edgeseg'),
    [string]$DataDir = (Join-Path $env:ProgramData 'edgeseg'),
    [string]$Nssm = '',
    [switch]$ScheduledTask,
    [string]$ServiceName = 'edgeseg',
    [string]$ServiceAccount = '',
    [securestring]$ServicePassword,
    [switch]$NoStart
)
$ErrorActionPreference = 'Stop'

function Say([string]$msg) { Write-Host "install.ps1: $msg" }

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'Run this script in a PowerShell started as Administrator.'
}

$app = Join-Path $Source 'edgeseg'
$exeSrc = Join-Path $app 'edgeseg.exe'
if (-not (Test-Path $exeSrc)) { throw "No frozen program at $exeSrc (unpack the whole archive, or pass -Source)." }
$configSrc = @((Join-Path $Source 'watch_config.yaml'), (Join-Path $app 'watch_config.yaml')) |
    Where-Object { Test-Path $_ } | Select-Object -First 1
if (-not $configSrc) { throw "No watch_config.yaml next to $Source or in $app." }

if (-not $ScheduledTask) {
    $nssmExe = $null
    foreach ($candidate in @($Nssm, (Join-Path $Source 'nssm.exe'))) {
        if ($candidate -and (Test-Path $candidate)) { $nssmExe = (Resolve-Path $candidate).Path; break }
    }
    if (-not $nssmExe) {
        $cmd = Get-Command nssm.exe -ErrorAction SilentlyContinue
        if ($cmd) { $nssmExe = $cmd.Source }
    }
    if (-not $nssmExe) {
        throw ('NSSM was not found (-Nssm PATH, nssm.exe next to this script, or on PATH). edgeseg.exe is a console ' +
               'program: a plain sc.exe service would be stopped by Windows after 30 s (error 1053). Get nssm.exe, ' +
               'or re-run with -ScheduledTask for a start-up task instead of a service.')
    }
}

# --- stop a running watcher before replacing its files
$existing = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($existing -and $existing.Status -ne 'Stopped') {
    Say "stopping service $ServiceName"
    Stop-Service -Name $ServiceName -Force
    $existing.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(90))
}
$task = Get-ScheduledTask -TaskName $ServiceName -ErrorAction SilentlyContinue
if ($task) { Stop-ScheduledTask -TaskName $ServiceName -ErrorAction SilentlyContinue }

# --- program: copied beside the old one, then swapped in
$new = "$InstallDir.new"
if (Test-Path $new) { Remove-Item -Recurse -Force $new }
Copy-Item -Recurse -Path $app -Destination $new
Copy-Item -Path $configSrc -Destination (Join-Path $new 'watch_config.yaml.default') -Force
$installTxt = Join-Path $Source 'INSTALL.txt'
if (Test-Path $installTxt) { Copy-Item $installTxt (Join-Path $new 'INSTALL.txt') -Force }
if (Test-Path $InstallDir) { Remove-Item -Recurse -Force $InstallDir }
Move-Item -Path $new -Destination $InstallDir
$exe = Join-Path $InstallDir 'edgeseg.exe'
Say "program in $InstallDir"

# --- data folders and the default bundle
foreach ($sub in 'incoming', 'state', 'logs', 'bundles') { New-Item -ItemType Directory -Force (Join-Path $DataDir $sub) | Out-Null }
$bundleSrc = Join-Path $Source 'bundles\demo'
if (Test-Path (Join-Path $bundleSrc 'bundle.json')) {
    $bundleDst = Join-Path $DataDir 'bundles\demo'
    if (Test-Path $bundleDst) { Remove-Item -Recurse -Force $bundleDst }
    Copy-Item -Recurse $bundleSrc $bundleDst
    Say "default bundle in $bundleDst"
}

# --- configuration: never overwrite an existing one
$config = Join-Path $DataDir 'watch_config.yaml'
if (Test-Path $config) {
    Say "keeping the existing configuration $config (new default: $InstallDir\watch_config.yaml.default)"
} else {
    $q = { param($p) "'" + ($p -replace "'", "''") + "'" }   # YAML single-quoted path
    $text = Get-Content -Raw -Path $configSrc
    $text = $text -replace '(?m)^(\s+- )\./incoming\s*$', ('$1' + (& $q (Join-Path $DataDir 'incoming')))
    $text = $text -replace '(?m)^state_dir: .*$', ('state_dir: ' + (& $q (Join-Path $DataDir 'state')))
    $text = $text -replace '(?m)^log_dir: .*$', ('log_dir: ' + (& $q (Join-Path $DataDir 'logs')))
    $header = "# Installed by edgeseg install.ps1. Set roots: to the folder(s) the scanner console exports to, then`r`n" +
              "# restart the service (Restart-Service $ServiceName). Check with: edgeseg.exe doctor --config `"$config`"`r`n"
    [IO.File]::WriteAllText($config, $header + $text, (New-Object Text.UTF8Encoding($false)))
    Say "configuration $config (watch folder $DataDir\incoming; edit roots:)"
}

$arguments = "watch --config `"$config`""
if ($ScheduledTask) {
    # --- start-up task (no service): SYSTEM, at boot, restart every minute on failure, no time limit
    $action = New-ScheduledTaskAction -Execute $exe -Argument $arguments -WorkingDirectory $DataDir
    $trigger = New-ScheduledTaskTrigger -AtStartup
    $settings = New-ScheduledTaskSettingsSet -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) `
        -ExecutionTimeLimit ([TimeSpan]::Zero) -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -StartWhenAvailable
    $taskPrincipal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    Register-ScheduledTask -TaskName $ServiceName -Action $action -Trigger $trigger -Settings $settings `
        -Principal $taskPrincipal -Description 'edgeseg watcher: hands-free MRI segmentation' -Force | Out-Null
    Say "start-up task $ServiceName registered"
    if (-not $NoStart) { Start-ScheduledTask -TaskName $ServiceName; Say "task $ServiceName started" }
} else {
    # --- service through NSSM (idempotent: an existing one is updated)
    if (-not (Get-Service -Name $ServiceName -ErrorAction SilentlyContinue)) {
        & $nssmExe install $ServiceName $exe | Out-Null
        if ($LASTEXITCODE -ne 0) { throw "nssm install $ServiceName failed ($LASTEXITCODE)" }
    }
    $settingsList = @(
        @('Application', $exe),
        @('AppParameters', $arguments),
        @('AppDirectory', $DataDir),
        @('DisplayName', 'edgeseg watcher'),
        @('Description', 'Hands-free MRI segmentation of the series the scanner console exports (edgeseg, OpenVINO).'),
        @('Start', 'SERVICE_AUTO_START'),
        @('AppStdout', (Join-Path $DataDir 'logs\service.log')),
        @('AppStderr', (Join-Path $DataDir 'logs\service.log')),
        @('AppRotateFiles', '1'),
        @('AppRotateBytes', '10000000'),
        @('AppStopMethodSkip', '0'),
        @('AppStopMethodConsole', '60000'),   # Ctrl+C, then 60 s for the running series (stop_grace_s is 30)
        @('AppExit', 'Default', 'Restart'),
        @('AppRestartDelay', '10000'),
        @('AppThrottle', '30000')
    )
    foreach ($s in $settingsList) {
        & $nssmExe set $ServiceName @s | Out-Null
        if ($LASTEXITCODE -ne 0) { throw "nssm set $ServiceName $($s -join ' ') failed ($LASTEXITCODE)" }
    }
    if ($ServiceAccount) {
        $plain = if ($ServicePassword) {
            [Runtime.InteropServices.Marshal]::PtrToStringAuto([Runtime.InteropServices.Marshal]::SecureStringToBSTR($ServicePassword))
        } else { '' }
        & $nssmExe set $ServiceName ObjectName $ServiceAccount $plain | Out-Null
    }
    Say "service $ServiceName registered with NSSM ($nssmExe)"
    if (-not $NoStart) { Start-Service -Name $ServiceName; Say "service $ServiceName started" }
}
Say "check the PC with: & `"$exe`" doctor --config `"$config`""
Say 'done'
