<#
.SYNOPSIS
  Remove the edgeseg service (or start-up task) and program from Windows. Idempotent.

.DESCRIPTION
  NOT RUN ON WINDOWS BY THE PROJECT YET (see installer/README.md). Configuration, job store, bundles and logs in
  C:\ProgramData\edgeseg are KEPT unless -Purge is given; results beside the series are never touched.

.EXAMPLE
  .\uninstall.ps1 -Purge
#>
[CmdletBinding()]
param(
    [string]$InstallDir = (Join-Path $env:ProgramFiles 'edgeseg'),
    [string]$DataDir = (Join-Path $env:ProgramData 'edgeseg'),
    [string]$Nssm = '',
    [string]$ServiceName = 'edgeseg',
    [switch]$Purge
)
$ErrorActionPreference = 'Stop'

function Say([string]$msg) { Write-Host "uninstall.ps1: $msg" }

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    throw 'Run this script in a PowerShell started as Administrator.'
}

$service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($service) {
    if ($service.Status -ne 'Stopped') {
        Stop-Service -Name $ServiceName -Force
        $service.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(90))
    }
    $nssmExe = @($Nssm, (Join-Path $PSScriptRoot 'nssm.exe')) | Where-Object { $_ -and (Test-Path $_) } | Select-Object -First 1
    if (-not $nssmExe) { $cmd = Get-Command nssm.exe -ErrorAction SilentlyContinue; if ($cmd) { $nssmExe = $cmd.Source } }
    if ($nssmExe) { & $nssmExe remove $ServiceName confirm | Out-Null } else { & sc.exe delete $ServiceName | Out-Null }
    Say "service $ServiceName removed"
} else {
    Say "no service $ServiceName"
}
if (Get-ScheduledTask -TaskName $ServiceName -ErrorAction SilentlyContinue) {
    Stop-ScheduledTask -TaskName $ServiceName -ErrorAction SilentlyContinue
    Unregister-ScheduledTask -TaskName $ServiceName -Confirm:$false
    Say "start-up task $ServiceName removed"
}

if (Test-Path $InstallDir) { Remove-Item -Recurse -Force $InstallDir; Say "removed $InstallDir" } else { Say "no program in $InstallDir" }
if ($Purge) {
    if (Test-Path $DataDir) { Remove-Item -Recurse -Force $DataDir }
    Say "purged configuration, state, bundles and logs ($DataDir)"
} else {
    Say "kept configuration, state, bundles and logs in $DataDir (remove them with -Purge)"
}
Say 'done'
