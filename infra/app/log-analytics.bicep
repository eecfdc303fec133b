// The Log Analytics workspace behind Application Insights, with local authentication disabled:
// the workspace's shared keys cannot be used to query or ingest, only Microsoft Entra ID
// (features.disableLocalAuth). Application Insights already ingests with Entra ID only
// (disableLocalAuth on the component, main.bicep), so nothing in this app needs the keys.

param name string
param location string
param tags object = {}

@description('Days of data kept.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
      enableLogAccessUsingOnlyResourcePermissions: true
    }
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

output resourceId string = workspace.id
output name string = workspace.name
